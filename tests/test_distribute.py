"""Training on TensorFlow's distribution engine: the `distribute:` section, TF_CONFIG checks, a one-replica
mirrored build, and two real workers (MultiWorkerMirroredStrategy over 127.0.0.1) that must end with identical
weights."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import REPO, SMOKE_RECIPE
from tinykd import config, distribute
from tinykd.errors import ConfigError

# A few steps of every training stage: 128 training samples, one epoch each, batches of 64 (the global batch).
FEW_STEPS = {"data.max_train_samples": "128", "data.max_test_samples": "64", "teacher.epochs": "1",
             "distill.epochs": "1", "prune.epochs": "1", "quantize.epochs": "1", "verify.per_stage": "false"}
TWO_WORKERS_SECONDS = 900  # generous: both workers share 2 loaded cores; a run took 4.7 min on such a machine


def test_an_unknown_strategy_is_refused_naming_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndistribute: {strategy: horovod}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: distribute\.strategy: must be one of default, mirrored, "
                                          r"multi_worker"):
        config.load(recipe)


def test_the_default_strategy_is_default(smoke_cfg):
    assert smoke_cfg.distribute.strategy == "default"
    assert distribute.start("default").chief


@pytest.mark.parametrize("text, problem", [
    (None, "is not set"),
    ("{cluster: 1}", "is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster" mapping'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     'list of "host:port" strings'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["a:2"]}, "task": {"type": "worker", "index": 0}}', "job 'ps'"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task.index must be 0 to 1"),
    ('{"cluster": {"worker": ["a:1"]}}', "task must be"),
])
def test_a_missing_or_malformed_tf_config_names_the_variable_and_shows_the_shape(text, problem):
    with pytest.raises(ConfigError) as error:
        distribute.parse_tf_config(text)
    message = str(error.value)
    assert message.startswith("distribute.strategy multi_worker: TF_CONFIG ")
    assert problem in message
    assert '{"cluster": {"worker": [' in message and '"task": {"type": "worker", "index": 0}' in message


def test_a_good_tf_config_gives_the_chief():
    layout = distribute.parse_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", '
                                        '"index": 1}}')
    assert layout["task"]["index"] == 1


def test_the_chief_is_worker_0_unless_the_cluster_has_a_chief_task():
    assert distribute.Cluster("multi_worker", workers=2, task_index=0).chief
    assert not distribute.Cluster("multi_worker", workers=2, task_index=1).chief
    assert not distribute.Cluster("multi_worker", workers=3, task_index=0, has_chief_task=True).chief
    assert distribute.Cluster("multi_worker", workers=3, task_type="chief", has_chief_task=True).chief


def test_mirrored_on_a_cpu_builds_the_smoke_recipe_with_one_replica_and_says_so(tmp_path):
    log = []
    # With clustering too: its cluster-preserving QAT wrappers are the ones Keras cannot clone into the scope.
    clustered = {"cluster.clusters": "8", "cluster.epochs": "1", "cluster.batch_size": "64"}
    cfg = config.load(SMOKE_RECIPE, FEW_STEPS | clustered | {"distribute.strategy": "mirrored"})
    from tinykd.pipeline import BuildOptions, build

    result = build(cfg, tmp_path, BuildOptions(log=log.append))
    assert [line for line in log if line.startswith("[distribute]")] == [
        "[distribute] mirrored: 1 replica(s) on /job:localhost/replica:0/task:0/device:CPU:0 (no GPU here: one "
        "replica, no faster than default)"]
    assert (result.run_dir / "convert" / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert result.report["recipe"]["distribute"] == {"strategy": "mirrored"}
    assert [stage["stage"] for stage in result.report["stages"]] == ["teacher", "distill", "prune", "cluster",
                                                                     "quantize", "int8"]
    assert 0.0 <= result.tflm_accuracy <= 1.0


# Two logical CPUs give MirroredStrategy two replicas in one process; they must be made before TensorFlow starts.
TWO_REPLICAS = """
import numpy as np
from tinykd.keras_shim import keras, tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tinykd.distill import Distiller

rng = np.random.default_rng(0)
x = rng.normal(size=(8, 4)).astype("float32")
labels = rng.integers(0, 3, size=8)
logits = rng.normal(size=(8, 3)).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    distiller = Distiller(student, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), temperature=4.0,
                          alpha=0.5)
batch = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, (labels, logits))).batch(8))))
per_replica = strategy.run(lambda b: distiller.compute_loss(b[0], b[1], student(b[0])), args=(batch,))
plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])  # the same student, outside any strategy
plain.set_weights(student.get_weights())
one = Distiller(plain, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), temperature=4.0, alpha=0.5)
print(strategy.num_replicas_in_sync, float(strategy.reduce("SUM", per_replica, axis=None)),
      float(one.compute_loss(x, (labels, logits), plain(x))))
"""


def test_the_distillation_loss_of_each_replica_sums_to_the_global_batch_mean():
    """Keras sums the replicas' gradients, so each replica's loss must be its share of the global batch mean; an
    unscaled loss would sum to twice the mean on two replicas (and train with twice the gradient)."""
    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS], env=os.environ | {"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    replicas, summed, whole = done.stdout.split()[-3:]
    assert int(replicas) == 2
    assert float(summed) == pytest.approx(float(whole), rel=1e-5)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for item in sockets:
            item.bind(("127.0.0.1", 0))
        return [item.getsockname()[1] for item in sockets]
    finally:
        for item in sockets:
            item.close()


def _fingerprints(output: str) -> dict[str, str]:
    return dict(re.findall(r"\[distribute\] (\w+) weights sha256 ([0-9a-f]{64})", output))


def test_two_workers_train_every_stage_together_and_end_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    overrides = [arg for key, value in (FEW_STEPS | {"distribute.strategy": "multi_worker"}).items()
                 for arg in ("--set", f"{key}={value}")]
    workers = []
    try:
        for index in range(2):
            scratch = tmp_path / f"tmp{index}"  # each worker's TMPDIR: the non-chief's temporary run goes here
            scratch.mkdir()
            env = os.environ | {"TF_CONFIG": json.dumps({"cluster": cluster,
                                                         "task": {"type": "worker", "index": index}}),
                                "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)}
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "tinykd", "build", str(SMOKE_RECIPE), "--quiet",
                 "--runs", str(tmp_path / f"runs{index}"), *overrides],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
        outputs = [worker.communicate(timeout=TWO_WORKERS_SECONDS) for worker in workers]
    finally:
        for worker in workers:  # whatever happened, no worker outlives the test
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out + err
    chief, other = (_fingerprints(out) for out, _ in outputs)
    assert set(chief) == {"teacher", "distill", "prune", "final"}
    assert chief == other  # every trained model, bit for bit, on both workers
    assert "2 workers, 2 replicas in sync; this is worker 0 (chief" in outputs[0][0]
    # Only the chief wrote a run, and what it saved is what it trained.
    run = tmp_path / "runs0" / "smoke"
    assert (run / "report.json").is_file() and (run / "export").is_dir()
    assert not (tmp_path / "runs1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []  # the worker's temporary run is gone
    from tinykd.models import load_model

    assert distribute.fingerprint(load_model(run / "teacher" / "teacher.keras")) == chief["teacher"]
    assert distribute.fingerprint(load_model(run / "distill" / "distill.keras")) == chief["distill"]
