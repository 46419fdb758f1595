"""Successive halving over the feasible candidates, each trial distilled from the cached teacher's soft targets.

Rung 0 trains every feasible candidate for `min_epochs`; each next rung keeps the best 1/eta (int8 accuracy on the
validation split in TFLite Micro; ties go to the lower latency) and trains them eta times longer from scratch,
up to `max_epochs`. Each finished trial is one JSON file written atomically, `trials/c<index>-e<epochs>.json`, with
the key of what it depends on: a killed search resumes from the trials on disk and redoes only the one it was in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from tinykd import artifacts, config, models
from tinykd.data import Dataset
from tinykd.search.space import student_config


@dataclass(frozen=True, kw_only=True)
class Trials:
    """Where trials are kept and what they share: the folder, the recipe, the data, the teacher's teaching."""

    folder: Path
    cfg: config.Config
    data: Dataset
    teaching: object  # tinykd.distill.Teaching
    teacher_id: str
    log: Callable[[str], None]


def rungs(search: config.SearchConfig) -> tuple[int, ...]:
    """Epochs of each rung: min_epochs, times eta each rung, ending at max_epochs."""
    epochs, found = search.min_epochs, []
    while epochs < search.max_epochs:
        found.append(epochs)
        epochs *= search.eta
    return tuple(found + [search.max_epochs])


def run(trials: Trials, candidates: list[dict], spent_seconds: float) -> list[dict]:
    """Successive halving over `candidates` (feasible ones, as in search.json); returns every trial record. No
    trial starts once the time budget (`search.hours`, counting `spent_seconds` already used) is spent."""
    search = trials.cfg.search
    limit = search.hours * 3600.0 if search.hours is not None else math.inf
    records, alive = [], list(candidates)
    for rung, epochs in enumerate(rungs(search)):
        if rung > 0:
            ranked = sorted((r for r in records if r["rung"] == rung - 1), key=rank)
            keep = {r["index"] for r in ranked[:math.ceil(len(ranked) / search.eta)]}
            alive = [c for c in alive if c["index"] in keep]
        for number, candidate in enumerate(alive, start=1):
            record = _reuse(trials, candidate, epochs)
            if record is None:
                spent = spent_seconds + sum(r["seconds"] for r in records)
                if spent >= limit:
                    trials.log(f"[search] time budget of {search.hours:g} h used ({spent / 3600:.2f} h): "
                               "no more trials")
                    return records
                trials.log(f"[trial {_name(candidate, epochs)}] rung {rung}, {number}/{len(alive)}: "
                           f"{candidate['name']} for {epochs} epochs")
                record = _train(trials, candidate, epochs)
                trials.log(f"[trial {_name(candidate, epochs)}] done in {record['seconds']:.1f} s: int8 val "
                           f"{record['int8_val_accuracy']:.2%}, float val {record['float_val_accuracy']:.2%}")
            else:
                trials.log(f"[trial {_name(candidate, epochs)}] finished earlier, reusing "
                           f"{_path(trials, candidate, epochs)}")
            records.append(record | {"rung": rung})
    return records


def near_chance(records: list[dict], labels: np.ndarray) -> str | None:
    """A warning when rung 0 left every candidate near chance, so its ranking is noise; None when it separated them.

    Near chance: the best rung-0 int8 validation accuracy under twice the most common class's share of `labels`
    (halfway from that share to 1 when the share is over a half).
    """
    first = [r for r in records if r["rung"] == 0]
    if not first:
        return None
    share = float(np.bincount(labels).max() / len(labels))
    best = max(r["int8_val_accuracy"] for r in first)
    if best >= min(2 * share, (1 + share) / 2):
        return None
    return (f"rung 0 ({first[0]['epochs']} epochs) left every candidate near chance (best {best:.1%} int8 "
            f"validation, most common class {share:.1%}): halving kept students at random. Raise search.min_epochs "
            "until the first rung separates them")


def rank(record: dict) -> tuple:
    """Best first: higher int8 validation accuracy, then lower latency."""
    return (-record["int8_val_accuracy"], record["latency_ms"], record["index"])


def _name(candidate: dict, epochs: int) -> str:
    return f"c{candidate['index']:03d}-e{epochs}"


def _path(trials: Trials, candidate: dict, epochs: int) -> Path:
    return trials.folder / f"{_name(candidate, epochs)}.json"


def _key(trials: Trials, candidate: dict, epochs: int) -> str:
    cfg = trials.cfg
    settings = {k: v for k, v in config.as_dict(cfg.distill).items() if k != "student"}  # the trial's is its own
    return artifacts.key("trial", candidate["student"], epochs, settings, cfg.seed,
                         config.as_dict(cfg.convert), trials.teacher_id, trials.data.fingerprint)


def _reuse(trials: Trials, candidate: dict, epochs: int) -> dict | None:
    try:
        record = json.loads(_path(trials, candidate, epochs).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("key") == _key(trials, candidate, epochs) else None


def _train(trials: Trials, candidate: dict, epochs: int) -> dict:
    """Distil one candidate for `epochs` epochs, convert it to int8 (post-training quantization, as the build's
    measure stage does) and run the validation split in TFLite Micro; the record is written atomically."""
    from tinykd.convert import int8_model
    from tinykd.distill import Schedule, accuracy, distill

    cfg, data = trials.cfg, trials.data
    started_at, started = time.time(), time.perf_counter()
    student = models.build(student_config(candidate["student"]), data.input_shape, data.num_classes, "student",
                           seed=cfg.seed)
    # Hints and attention name the recipe's student's layers, which another student may not have: logits only.
    teaching = replace(trials.teaching, config=replace(cfg.distill, hints=(), attention=()))
    schedule = Schedule(epochs=epochs, batch_size=cfg.distill.batch_size, learning_rate=cfg.distill.learning_rate,
                        seed=cfg.seed, augment=cfg.data.augment)
    distill(teaching, student, data, schedule)
    tflite = int8_model(student, data, cfg, cfg.convert.representative_samples)
    record = {"key": _key(trials, candidate, epochs), "index": candidate["index"], "name": candidate["name"],
              "epochs": epochs, "float_val_accuracy": accuracy(student, data.val),
              "int8_val_accuracy": int8_accuracy(tflite, data.val, candidate["cost"]["arena_host_bytes"]),
              "tflite_bytes": len(tflite), **{k: candidate["cost"][k] for k in ("latency_ms", "flash_bytes",
                                                                                 "ram_bytes")},
              "started_at": started_at, "finished_at": time.time(),
              "seconds": round(time.perf_counter() - started, 2)}
    artifacts.write_json(_path(trials, candidate, epochs), record)
    return record


def int8_accuracy(tflite: bytes, split, arena_bytes: int) -> float:
    """Top-1 accuracy of an int8 model on `split` in TFLite Micro (tinykd.tflm, in a child process)."""
    from tinykd import model_file, tflm
    from tinykd.verify import quantize_input

    given = model_file.read(tflite, "candidate").inputs[0]
    inputs = quantize_input(split.x, {"scales": [given.scale], "zero_points": [given.zero_point]})
    outputs = tflm.start(tflite, inputs, arena_bytes + 1024).outputs()[0]
    return float(np.mean(outputs.argmax(-1) == split.y))
