"""Training on TensorFlow's distribution engine: the recipe's `distribute.strategy` as a `tf.distribute.Strategy`.

Only training runs under the strategy. `tinykd.distill.distill` and `train_on_labels` copy the model (and the
teacher) into `strategy.scope()`, train the copy with sharded input and the recipe's batch size as the global batch
size, and copy the trained weights back into the plain model they were handed. So every other step (evaluation,
conversion, TFLM checks, saving) sees ordinary Keras models and runs no collective op: a worker can never wait
for a collective that another worker skipped, as long as every worker runs the same training runs in the same
order (tinykd.pipeline makes sure of that: in multi_worker mode no stage is reused).

This is the one module that reads TF_CONFIG (TensorFlow's MultiWorkerMirroredStrategy reads it from the
environment itself; it is checked here first so a mistake gives one clear error instead of a hang).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from tinykd.config import DISTRIBUTE_STRATEGIES
from tinykd.errors import ConfigError

STRATEGIES = DISTRIBUTE_STRATEGIES
# The one environment variable read outside the shim and the CLI: TensorFlow's MultiWorkerMirroredStrategy takes
# its cluster from TF_CONFIG itself, so tinykd checks the same variable it will read, before it hangs on a bad one.
ENV = "TF_CONFIG"
EXAMPLE = ('{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}')

_created: dict = {}  # one strategy per process: collectives are configured once, at the first strategy


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: how many workers train together, which one it is, whether it writes the run."""

    strategy: str
    workers: int = 1
    task_type: str = "worker"
    task_index: int = 0
    replicas: int = 1
    devices: tuple[str, ...] = ()
    has_chief_task: bool = False  # TF_CONFIG's cluster has a "chief" job besides the workers

    @property
    def chief(self) -> bool:
        """The worker that writes the run folder: the `chief` task if the cluster has one, else worker 0 (as TF's
        MultiWorkerMirroredStrategy decides)."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                              and not self.has_chief_task)

    def describe(self) -> str:
        """One line for the build log."""
        if self.strategy == "default":
            return "default: one process, no tf.distribute strategy"
        where = ", ".join(self.devices)
        if self.strategy == "mirrored":
            note = "" if self.replicas > 1 else " (no GPU here: one replica, no faster than default)"
            return f"mirrored: {self.replicas} replica(s) on {where}{note}"
        role = "chief, writes the run" if self.chief else "trains with the chief, writes a temporary folder"
        return (f"multi_worker: {self.workers} workers, {self.replicas} replicas in sync; this is "
                f"{self.task_type} {self.task_index} ({role})")


def parse_tf_config(text: str | None) -> dict:
    """TF_CONFIG as TensorFlow documents it, checked: a cluster with a list of host:port workers (and at most one
    chief) and this process's task in it.

    Raises:
        ConfigError: naming TF_CONFIG, what is wrong and the expected shape.
    """
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"distribute.strategy multi_worker: {ENV} {problem}; set it on every worker to JSON like "
                           f"{EXAMPLE} (the same cluster on each, its own task index; docs/distributed.md)")

    if not text or not text.strip():
        raise fail("is not set")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise fail(f"is not valid JSON ({error})") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict):
        raise fail("has no \"cluster\" mapping")
    cluster = value["cluster"]
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise fail(f"names job {job!r}; MultiWorkerMirroredStrategy uses only \"worker\" and \"chief\"")
        if not isinstance(addresses, list) or not addresses or \
                not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0]
                        for a in addresses):
            raise fail(f"cluster.{job} must be a non-empty list of \"host:port\" strings, got {addresses!r}")
    if "worker" not in cluster and "chief" not in cluster:
        raise fail("has no workers in \"cluster\"")
    if len(cluster.get("chief", [])) > 1:
        raise fail("has more than one chief")
    task = value.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise fail(f"task must be {{\"type\": one of {sorted(cluster)}, \"index\": N}}, got {task!r}")
    index = task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise fail(f"task.index must be 0 to {len(cluster[task['type']]) - 1} for job {task['type']!r}, "
                   f"got {index!r}")
    return value


def start(strategy: str) -> Cluster:
    """Create this process's strategy for the recipe's `distribute.strategy` (once per process) and describe it.

    Call it before any training: MultiWorkerMirroredStrategy configures TensorFlow's collectives and waits for
    every worker in TF_CONFIG to join.
    """
    if strategy == "default":
        return Cluster(strategy)
    layout = parse_tf_config(os.environ.get(ENV)) if strategy == "multi_worker" else None
    made = strategy_of(strategy)
    devices = tuple(str(d) for d in made.extended.worker_devices)
    if layout is None:
        return Cluster(strategy, replicas=made.num_replicas_in_sync, devices=devices)
    cluster = layout["cluster"]
    return Cluster(strategy, workers=sum(len(a) for a in cluster.values()), task_type=layout["task"]["type"],
                   task_index=layout["task"].get("index", 0), replicas=made.num_replicas_in_sync, devices=devices,
                   has_chief_task="chief" in cluster)


def strategy_of(strategy: str):
    """This process's `tf.distribute.Strategy` for `strategy` (None for default), created at the first call."""
    if strategy == "default":
        return None
    if strategy not in _created:
        if _created:
            raise ConfigError(f"distribute.strategy {strategy}: this process already trains under "
                              f"{next(iter(_created))}; TensorFlow's collectives are set up once per process, so "
                              "run one strategy per process")
        from tinykd.keras_shim import tf

        if strategy == "multi_worker":
            parse_tf_config(os.environ.get(ENV))
            _created[strategy] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            _created[strategy] = tf.distribute.MirroredStrategy()
    return _created[strategy]


def fingerprint(model) -> str:
    """sha256 of every weight of `model`, in order: equal on two workers exactly when their weights are equal."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(str((weight.dtype, weight.shape)).encode())
        digest.update(weight.tobytes())
    return digest.hexdigest()


def barrier(strategy: str) -> None:
    """Wait until every worker of a multi_worker job gets here (one all-reduce); nothing to wait for otherwise."""
    made = strategy_of(strategy) if strategy == "multi_worker" else None
    if made is None:
        return
    from tinykd.keras_shim import tf

    made.reduce(tf.distribute.ReduceOp.SUM, made.run(lambda: tf.constant(1.0)), axis=None)
