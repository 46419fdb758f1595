"""The teacher stage: trained once per (teacher config, data) and cached across runs, or loaded from teacher.path;
with `distill.ensemble`, more teachers, cached the same way, whose soft targets are averaged with its own.

Ensemble members live here rather than in tinykd.distill because each one is obtained exactly like the main
teacher (loaded, reused from the cache or trained); tinykd.distill.ensemble only combines finished models into
one soft-target teacher. The stage hands on a `Teaching`, with the teacher's logits on the training and
validation splits saved beside the cached teacher (`teacher-<key>.logits/`, .npy shards and an index, see
tinykd.data.shards), so a rebuild, another student, a sweep or a pruning step does not run the teacher again;
when hints or attention are used, the main teacher's layers they name are stored the same way, one folder per
layer (`teacher-<key>.features-<layer>/`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinykd import artifacts, config, models, own_model
from tinykd.artifacts import Run
from tinykd.convert import convert_float
from tinykd.data import Dataset, shards
from tinykd.distill import Schedule, Teaching, accuracy, ensemble, model_metrics, teacher_features, teacher_logits
from tinykd.distill import train_on_labels, training_split
from tinykd.errors import ModelError
from tinykd.models import load_model

CACHE = ".teacher_cache"  # beside the runs: shared by every recipe with the same teacher and data


@dataclass(frozen=True)
class Teachers:
    """What the teacher stages hand to training: the teaching, and the id of the run that made it."""

    teaching: Teaching
    run_id: str


def stage(run: Run, cfg: config.Config, data: Dataset) -> Teachers:
    """The main teacher, and with `distill.ensemble` the extra teachers, as a `Teaching` for every training stage."""
    key = teacher_key(cfg.teacher, data, cfg.distribute.strategy)
    cache = run.root.parent / CACHE
    main = run.step("teacher", key, lambda: _one_teacher(run, cfg.teacher, data, cfg, "teacher",
                                                          run.dir("teacher") / "teacher.keras"),
                    load=lambda folder: load_model(folder / "teacher.keras"), artifact="teacher.keras")
    features = _features(main.value, data, cache / f"teacher-{key}", cfg) if _uses_features(cfg) else {}
    if cfg.distill.ensemble:
        return _ensemble(run, cfg, data, main, features)
    soft_targets = _soft_targets(main.value, data, cache / f"teacher-{key}.logits") if _uses_logits(cfg) else {}
    return Teachers(Teaching(teacher=main.value, config=cfg.distill, feature_teacher=main.value,
                             soft_targets=soft_targets, features=features), main.run_id)


def teacher_key(teacher_cfg, data: Dataset, strategy: str = "default") -> str:
    """What a trained teacher depends on: its config (an ensemble member's weight aside), the data, and the
    distribution strategy it trains under when not the default (replicas add gradients in another order)."""
    source = Path(teacher_cfg.path).expanduser() if teacher_cfg.path else None
    settings = config.as_dict(teacher_cfg)
    settings.pop("weight", None)
    for name in ("path", "factory", "module_dir"):  # your model: by own_model.identity (a zoo key stays as it was)
        settings["model"].pop(name)
    parts = ("teacher", settings, data.fingerprint, _source_stamp(source) if source else None,
             *own_model.identity(teacher_cfg.model))
    return artifacts.key(*parts, *(() if strategy == "default" else (strategy,)))


def _ensemble(run: Run, cfg: config.Config, data: Dataset, main: artifacts.Done, features: dict) -> Teachers:
    """The main teacher and `distill.ensemble`'s teachers as one model whose soft targets at the recipe's
    temperature are their weighted mean; each extra teacher is cached like the main one. Hints and attention read
    the main teacher's layers (`features`, stored by `stage`)."""
    members = cfg.distill.ensemble
    keys = [teacher_key(member, data, cfg.distribute.strategy) for member in members]
    weights = [cfg.distill.teacher_weight] + [member.weight for member in members]
    key = artifacts.key("ensemble", keys, weights, cfg.distill.temperature, main.run_id)
    names = [f"teacher{i + 1}.keras" for i in range(len(members))]

    def compute():
        trained = [_one_teacher(run, member, data, cfg, f"ensemble {i + 1}", run.dir("ensemble") / names[i])
                   for i, member in enumerate(members)]
        combined = ensemble([main.value] + [model for model, _ in trained], weights, cfg.distill.temperature)
        member_metrics = [metrics for _, metrics in trained]
        return None, {"teachers": 1 + len(members), "weights": weights,
                      "val_accuracy": accuracy(combined, data.val), "test_accuracy": accuracy(combined, data.test),
                      "members": member_metrics,
                      "extra_teachers_training_seconds": round(sum(m.get("training_seconds") or 0.0
                                                                   for m in member_metrics), 1)}

    done = run.step("ensemble", key, compute, load=lambda folder: [load_model(folder / name) for name in names],
                    artifact=names[-1])
    combined = ensemble([main.value] + done.value, weights, cfg.distill.temperature)
    cache = run.root.parent / CACHE
    soft_targets = _soft_targets(combined, data, cache / f"ensemble-{key}.logits") if _uses_logits(cfg) else {}
    return Teachers(Teaching(teacher=combined, config=cfg.distill, feature_teacher=main.value,
                             extra_teachers=tuple(done.value), soft_targets=soft_targets, features=features),
                    done.run_id)


def _one_teacher(run: Run, teacher_cfg, data: Dataset, cfg: config.Config, label: str, path: Path):
    """Load, reuse from the cache or train one teacher into `path`; returns it and its metrics."""
    key = teacher_key(teacher_cfg, data, cfg.distribute.strategy)
    cache = run.root.parent / CACHE
    source = Path(teacher_cfg.path).expanduser() if teacher_cfg.path else None
    cached = cache / f"teacher-{key}.keras"
    forced = "teacher" in run.force or label != "teacher" and "ensemble" in run.force
    trained_seconds = None
    if source is not None:
        run.log(f"[{label}] loading {source}")
        artifacts.save_model(_load_teacher(source, data), path)
    elif cached.exists() and not forced:
        run.log(f"[{label}] reusing the teacher trained for this config and data ({cached})")
        artifacts.copy_file(cached, path)
    else:
        own = teacher_cfg.model.path or teacher_cfg.model.factory
        run.log(f"[{label}] training {own or teacher_cfg.model.arch} for {teacher_cfg.epochs} epochs")
        started = time.time()
        model = models.build(teacher_cfg.model, data.input_shape, data.num_classes, "teacher", seed=teacher_cfg.seed,
                             key=_model_key(label))
        schedule = Schedule.of(teacher_cfg, seed=teacher_cfg.seed, verbose=run.verbose, augment=cfg.data.augment,
                               strategy=cfg.distribute.strategy)
        artifacts.save_model(train_on_labels(model, data, schedule), path)
        trained_seconds = round(time.time() - started, 1)
        artifacts.copy_file(path, cached)
    model = load_model(path)
    metrics_file = cache / f"teacher-{key}.json"
    if metrics_file.exists() and not forced and trained_seconds is None:
        metrics = json.loads(metrics_file.read_text())
    else:
        # Training time stays with the cached teacher, so a rebuild still reports what the teacher cost.
        metrics = model_metrics(model, data) | {"tflite_float_bytes": len(convert_float(model)),
                                                "training_seconds": trained_seconds}
        artifacts.write_json(metrics_file, metrics)
    return model, metrics


def _model_key(label: str) -> str:
    """The recipe key of a teacher's model section, from its label ("teacher" or "ensemble N")."""
    return "teacher.model" if label == "teacher" else f"distill.ensemble[{int(label.split()[-1]) - 1}].model"


def _uses_logits(cfg: config.Config) -> bool:
    """Whether distillation feeds precomputed teacher logits (no augmentation, alpha above 0)."""
    augmenting = cfg.data.augment is not None and cfg.data.augment.active
    return cfg.distill.alpha > 0.0 and not augmenting


def _uses_features(cfg: config.Config) -> bool:
    """Whether distillation feeds stored teacher layers (hints or attention, no augmentation: stored layers would
    describe the un-augmented inputs)."""
    augmenting = cfg.data.augment is not None and cfg.data.augment.active
    return bool(cfg.distill.hints or cfg.distill.attention) and not augmenting


def _features(model, data: Dataset, prefix: Path, cfg: config.Config) -> dict[str, dict[str, np.ndarray]]:
    """The outputs of `model`'s layers that hints and attention name, on the training and validation splits, by
    split name then layer name: stored in shards beside the cached teacher (`<prefix>.features-<layer>/`, one folder
    per layer) so a rebuild skips them; a streamed training split is read from disk a shard at a time."""
    name, split = training_split(data)
    splits = {name: split.x, "val": data.val.x}
    keys = {}  # each layer once, with the first recipe key naming it (for the error when it does not exist)
    for kind, pairs in (("hints", cfg.distill.hints), ("attention", cfg.distill.attention)):
        for i, pair in enumerate(pairs):
            keys.setdefault(pair.teacher_layer, f"distill.{kind}[{i}].teacher_layer")
    features = {split_name: {} for split_name in splits}
    for layer, key in keys.items():
        folder = prefix.parent / f"{prefix.name}.features-{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}"
        for split_name, x in splits.items():
            if split_name not in shards.rows(folder) or len(shards.rows(folder)[split_name]) != len(x):
                shards.write(folder, split_name, len(x), lambda start, stop, x=x, layer=layer, key=key:
                             teacher_features(model, layer, key, x[start:stop]))
            # Left on disk: training reads each batch's rows from the memory-mapped shards.
            features[split_name][layer] = shards.rows(folder)[split_name]
    return features


def _soft_targets(model, data: Dataset, folder: Path) -> dict[str, np.ndarray]:
    """The teacher's logits on every split it teaches on, stored in shards beside the cached teacher so a rebuild
    skips them; a streamed training split is read from disk once, a shard at a time."""
    splits = {"train": data.train.x, "val": data.val.x}
    name, split = training_split(data)
    splits[name] = split.x
    stored = shards.read(folder)
    logits = {}
    for name, x in splits.items():
        if name in stored and stored[name].shape[0] == len(x):
            logits[name] = stored[name]
        else:
            logits[name] = np.asarray(shards.write(folder, name, len(x),
                                                   lambda start, stop, x=x: teacher_logits(model, x[start:stop])))
    return logits


def _load_teacher(source: Path, data: Dataset):
    """A user's trained teacher, checked against the data it will teach on."""
    if not source.exists():
        raise ModelError(f"teacher.path: {source} does not exist; give a .keras file or a SavedModel folder, "
                         "or remove teacher.path to train one")
    try:
        model = load_model(source)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for unreadable models
        raise ModelError(f"teacher.path: cannot load {source} as a Keras model ({error}); save it with "
                         "model.save('teacher.keras')") from None
    if tuple(model.input_shape[1:]) != tuple(data.input_shape) or model.output_shape[-1] != data.num_classes:
        raise ModelError(f"teacher.path: {source} takes {tuple(model.input_shape[1:])} and gives "
                         f"{model.output_shape[-1]} outputs, but the data has inputs {data.input_shape} and "
                         f"{data.num_classes} classes")
    return model


def _source_stamp(path: Path) -> list:
    """Identify a user's teacher file by size and modification time (hashing a SavedModel folder is slow)."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
