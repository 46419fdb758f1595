"""`tinykd build`: teacher -> distilled student -> pruned -> INT8 QAT -> full-int8 .tflite -> TFLM check -> C files.

Each stage writes to `runs/<name>/<stage>/` and finishes with a record of its inputs' key; a stage whose key is
unchanged is not redone, `force` redoes named stages, and every stage after a redone one is redone as well.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinykd import artifacts, config, data as data_layer, models
from tinykd.artifacts import Run
from tinykd.errors import ConfigError, ConversionError, ExportError, ModelError, VerificationError

STAGES = ("teacher", "ensemble", "distill", "prune", "cluster", "quantize", "convert", "verify", "measure", "compress",
          "export", "report")
OPTIONAL_STAGES = ("ensemble", "cluster", "compress")  # run only when the recipe has the section
TEACHER_CACHE = ".teacher_cache"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to run a build, as opposed to what to build (the recipe)."""

    force: tuple[str, ...] = ()
    data_dirs: tuple[Path, ...] = ()
    verbose: int = 0
    log: Callable[[str], None] = lambda message: None


def build(cfg: config.Config, runs_dir: Path, options: BuildOptions = BuildOptions()) -> dict:
    """Run every stage of the recipe, reusing finished ones; returns the report (also in runs/<name>/report.json)."""
    unknown = set(options.force) - set(STAGES)
    if unknown:
        raise ConfigError(f"--force {', '.join(sorted(unknown))}: no such stage; stages are {', '.join(STAGES)}")
    run = Run(Path(runs_dir) / cfg.name, options.force)
    stage = _Stages(run, Path(runs_dir) / TEACHER_CACHE, options)

    # 1. data: every split in memory, with a fingerprint of the files and the split
    data = data_layer.load(cfg.data, cfg.data.seed, options.data_dirs, frontend=cfg.frontend)
    options.log(f"[data] {data.source}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test, "
                f"input {data.input_shape}, {data.num_classes} classes"
                + (f"; skipped {len(data.skipped)} unreadable files" if data.skipped else ""))

    # 2. teacher: trained once per (teacher config, data) and cached across runs, or loaded from teacher.path;
    #    with distill.ensemble, more teachers (cached the same way) whose soft targets are averaged with its own
    teacher = stage.teacher(cfg, data)
    teachers = stage.ensemble(cfg, data, teacher) if cfg.distill.ensemble else teacher

    # 3. distill: a fresh student learns from the frozen teacher's soft targets (and hints, attention, rounds)
    student = stage.run("distill", (cfg.distill, cfg.seed),
                        lambda: _distilled(teachers.model, teacher.model, data, cfg, options), data, after=teachers)
    floats = {"distill": student}  # the float model after each stage, measured as int8 too (verify.per_stage)

    # 4. prune: magnitude pruning to the target sparsity, fine-tuned with the distillation loss
    if cfg.prune is not None:
        student = stage.run("prune", cfg.prune,
                            lambda: _pruned(student.model, teachers.model, teacher.model, data, cfg, options),
                            data, after=student)
        floats["prune"] = student

    # 4b. cluster: shared weight values per kernel, so LUT compression can store indices (with `compress:`)
    if cfg.cluster is not None:
        student = stage.run("cluster", cfg.cluster,
                            lambda: _clustered(student.model, teachers.model, teacher.model, data, cfg, options),
                            data, after=student)
        floats["cluster"] = student

    # 5. quantize: INT8 quantization-aware training, still distilling (keeping zeros and clusters)
    if cfg.quantize is not None:
        before = student.model
        student = stage.run("quantize", cfg.quantize,
                            lambda: _quantized(student.model, teachers.model, teacher.model, data, cfg, options),
                            data, after=student, load=lambda path: _reload_qat(before, path, cfg))

    # 6. convert: full-int8 .tflite, calibrated on training samples; fails naming any float op
    tflite = stage.convert(student, data, cfg)

    # 7. verify: the whole test split in TFLite Micro and in TFLite's reference kernels; TFLM accuracy is reported
    verification = stage.verify(tflite, data, cfg)

    # 7a. measure: each float stage's model, post-training quantized, in TFLM and on the board (what each bought)
    if cfg.verify.per_stage:
        stage.measure(floats, data, cfg)

    # 7b. compress: TFLite Micro's LUT compression, with TFLM outputs identical to the verified model's
    if cfg.compress is not None:
        tflite = stage.compress(tflite, data, cfg)

    # 8. export: C/C++ files for TFLite Micro firmware
    stage.export(tflite, verification, data, cfg)

    # 9. report: accuracy at every stage, size, arena, time; JSON, Markdown and a plot
    from tinykd import build_report

    return build_report.write(run, cfg, data, stage.records)


@dataclass(frozen=True)
class _Result:
    model: object
    record: dict


class _Stages:
    """Runs one stage at a time: skip it when its record matches, else compute, save atomically and record."""

    def __init__(self, run: Run, teacher_cache: Path, options: BuildOptions):
        self.run_dir = run
        self.teacher_cache = teacher_cache
        self.options = options
        self.records: dict[str, dict] = {}

    def _cached(self, name: str, key: str, artifact: Path | None = None) -> dict | None:
        record = self.run_dir.cached(name, key)
        if record is not None and artifact is not None and not artifact.exists():
            record = None
        if record is not None:
            self.options.log(f"[{name}] unchanged, reusing {self.run_dir.root / name} "
                             f"(--force {name} to redo)")
        else:
            self.run_dir.start(name)
        return record

    def _finish(self, name: str, key: str, metrics: dict, started: float) -> dict:
        record = self.run_dir.finish(name, key, metrics, started)
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in metrics.items() if not isinstance(v, (dict, list, tuple)))
        self.options.log(f"[{name}] done in {record['seconds']:.1f} s: {shown}")
        return record

    def teacher(self, cfg: config.Config, data) -> _Result:
        key = _teacher_key(cfg.teacher, data)
        path = self.run_dir.dir("teacher") / "teacher.keras"
        record = self._cached("teacher", key, path)
        if record is None:
            started = time.time()
            model, metrics = self._one_teacher(cfg.teacher, key, path, data, cfg, "teacher")
            record = self._finish("teacher", key, metrics, started)
        else:
            model = _load(path)
        if _uses_teacher_logits(cfg) and not cfg.distill.ensemble:
            self._teacher_logits(model, data, self.teacher_cache / f"teacher-{key}.logits.npz")
        self.records["teacher"] = record
        return _Result(model, record)

    def _one_teacher(self, teacher_cfg, key: str, path: Path, data, cfg: config.Config, label: str):
        """Load, reuse from the cache or train one teacher into `path`; returns it and its metrics."""
        source = Path(teacher_cfg.path).expanduser() if teacher_cfg.path else None
        cached = self.teacher_cache / f"teacher-{key}.keras"
        forced = "teacher" in self.run_dir.force or label != "teacher" and "ensemble" in self.run_dir.force
        trained_seconds = None
        if source is not None:
            self.options.log(f"[{label}] loading {source}")
            artifacts.save_model(_load_teacher(source, data), path)
        elif cached.exists() and not forced:
            self.options.log(f"[{label}] reusing the teacher trained for this config and data ({cached})")
            artifacts.copy_file(cached, path)
        else:
            self.options.log(f"[{label}] training {teacher_cfg.model.arch} for {teacher_cfg.epochs} epochs")
            started = time.time()
            artifacts.save_model(_trained_teacher(data, teacher_cfg, cfg, self.options), path)
            trained_seconds = round(time.time() - started, 1)
            artifacts.copy_file(path, cached)
        model = _load(path)
        metrics_file = self.teacher_cache / f"teacher-{key}.json"
        if metrics_file.exists() and not forced and trained_seconds is None:
            metrics = json.loads(metrics_file.read_text())
        else:
            # Training time stays with the cached teacher, so a rebuild still reports what the teacher cost.
            metrics = _model_metrics(model, data) | {"tflite_float_bytes": len(_float_tflite(model)),
                                                     "training_seconds": trained_seconds}
            artifacts.write_json(metrics_file, metrics)
        return model, metrics

    def ensemble(self, cfg: config.Config, data, teacher: _Result) -> _Result:
        """The main teacher and `distill.ensemble`'s teachers as one model whose soft targets at the recipe's
        temperature are their weighted mean; each extra teacher is cached like the main one."""
        from tinykd.distill import accuracy, ensemble

        members = cfg.distill.ensemble
        keys = [_teacher_key(member, data) for member in members]
        weights = [cfg.distill.teacher_weight] + [member.weight for member in members]
        key = artifacts.key("ensemble", keys, weights, cfg.distill.temperature, teacher.record["run_id"])
        paths = [self.run_dir.dir("ensemble") / f"teacher{i + 1}.keras" for i in range(len(members))]
        record = self._cached("ensemble", key, paths[-1])
        models_ = []
        if record is None:
            started = time.time()
            member_metrics = []
            for i, (member, member_key, path) in enumerate(zip(members, keys, paths)):
                model, metrics = self._one_teacher(member, member_key, path, data, cfg, f"ensemble {i + 1}")
                models_.append(model)
                member_metrics.append(metrics)
            combined = ensemble([teacher.model] + models_, weights, cfg.distill.temperature)
            metrics = {"teachers": 1 + len(members), "weights": weights,
                       "val_accuracy": accuracy(combined, data.val), "test_accuracy": accuracy(combined, data.test),
                       "members": member_metrics,
                       "extra_teachers_training_seconds": round(sum(m.get("training_seconds") or 0.0
                                                                    for m in member_metrics), 1)}
            record = self._finish("ensemble", key, metrics, started)
        else:
            models_ = [_load(path) for path in paths]
            combined = ensemble([teacher.model] + models_, weights, cfg.distill.temperature)
        if _uses_teacher_logits(cfg):
            self._teacher_logits(combined, data, self.teacher_cache / f"ensemble-{key}.logits.npz")
        self.records["ensemble"] = record
        return _Result(combined, record)

    def _teacher_logits(self, model, data, path: Path) -> None:
        """Teacher logits on train and validation, saved beside the cached teacher so a rebuild skips them."""
        from tinykd.distill import remember_logits, teacher_logits

        if path.exists():
            with np.load(path) as saved:
                if saved["train"].shape[0] == len(data.train) and saved["val"].shape[0] == len(data.val):
                    remember_logits(model, data.train.x, saved["train"])
                    remember_logits(model, data.val.x, saved["val"])
                    return
        buffer = io.BytesIO()
        np.savez(buffer, train=teacher_logits(model, data.train.x), val=teacher_logits(model, data.val.x))
        artifacts.write_bytes(path, buffer.getvalue())

    def run(self, name: str, stage_cfg, compute, data, after: _Result, load=None) -> _Result:
        """Compute a model stage or reuse it; `load(path)` reads the saved model back (default: load_model)."""
        key = artifacts.key(name, config.as_dict(stage_cfg) if hasattr(stage_cfg, "__dataclass_fields__")
                            else config.plain(stage_cfg), after.record["run_id"])
        # Keras' .keras format loses a QAT model's quantizer variables (tf-keras 2.21 + TFMOT 0.8.1); HDF5 keeps them.
        path = self.run_dir.dir(name) / (f"{name}.h5" if name == "quantize" else f"{name}.keras")
        record = self._cached(name, key, path)
        if record is None:
            started = time.time()
            self.options.log(f"[{name}] running")
            model, extra = compute()
            if name != "quantize":  # a fake-quant model has no meaningful float .tflite size
                extra = extra | {"tflite_float_bytes": len(_float_tflite(model))}
            artifacts.save_model(model, path)
            record = self._finish(name, key, _model_metrics(model, data) | extra, started)
        self.records[name] = record
        return _Result((load or _load)(path), record)

    def convert(self, student: _Result, data, cfg: config.Config) -> _Result:
        from tinykd import model_file

        key = artifacts.key("convert", config.as_dict(cfg.convert), student.record["run_id"])
        path = self.run_dir.dir("convert") / "model.tflite"
        record = self._cached("convert", key, path)
        if record is None:
            started = time.time()
            self.options.log("[convert] full-int8 conversion" + ("" if cfg.quantize else
                                                                   " (post-training quantization: quantize is none)"))
            tflite = _convert(student.model, data, cfg, cfg.convert.representative_samples,
                              qat=cfg.quantize is not None)
            info = model_file.read(tflite, str(path))
            if cfg.frontend is not None:
                _check_frontend_input(info, path)
            artifacts.write_bytes(path, tflite)
            record = self._finish("convert", key, {
                "tflite_bytes": len(tflite), "gzip_bytes": _gzip_bytes(tflite), "ops": list(info.op_names),
                "input": _tensor(info.inputs[0]), "output": _tensor(info.outputs[0])}, started)
        self.records["convert"] = record
        return _Result(path.read_bytes(), record)

    def verify(self, tflite: _Result, data, cfg: config.Config) -> _Result:
        from tinykd.report import report
        from tinykd.verify import verify

        key = artifacts.key("verify", config.as_dict(cfg.verify), cfg.target.board, tflite.record["run_id"],
                            data.fingerprint)
        record = self._cached("verify", key)
        if record is None:
            started = time.time()
            test = data.test.head(cfg.verify.max_samples)
            self.options.log(f"[verify] {len(test)} test samples in TFLite Micro and TFLite reference kernels")
            # The report measures the arena in a child process (a crash there cannot take the build down);
            # verify reuses that measurement instead of searching for the arena a second time.
            board = report(tflite.model, cfg.target.board, source=str(self.run_dir.root / "convert" / "model.tflite"))
            result = verify(tflite.model, test, arena_bytes=board.arena_host_bytes)
            metrics = result.__dict__ | {"arena_bytes": board.arena_host_bytes, "board_report": board.as_dict()}
            record = self._finish("verify", key, metrics, started)
        self.records["verify"] = record
        metrics = record["metrics"]
        if metrics["top1_agreement"] < 1.0:
            disagree = round((1.0 - metrics["top1_agreement"]) * metrics["samples"])
            raise VerificationError(
                f"TFLite Micro and the TFLite reference kernels disagree on the top-1 class of {disagree} of "
                f"{metrics['samples']} test inputs (largest output difference {metrics['max_lsb_diff']} LSB), so "
                f"the accuracy of {self.run_dir.root / 'convert' / 'model.tflite'} depends on the runtime. TFLite's "
                "reference FULLY_CONNECTED and MEAN kernels round differently from TFLite Micro's: use a student "
                "head without them (head: flatten or pool_flatten, dense_units: 0), or measure on the board.")
        return _Result(metrics, record)

    def measure(self, floats: dict[str, _Result], data, cfg: config.Config) -> None:
        """Each float stage's model as a post-training quantized int8 model: TFLM accuracy on the test split, and
        what `tinykd report` says the recipe's board needs for it. Unstructured zeros show here as what they are:
        the same bytes, flash and latency as the model before pruning."""
        key = artifacts.key("measure", {name: result.record["run_id"] for name, result in floats.items()},
                            config.as_dict(cfg.convert), config.as_dict(cfg.verify), cfg.target.board,
                            data.fingerprint)
        record = self._cached("measure", key)
        if record is None:
            started = time.time()
            test = data.test.head(cfg.verify.max_samples)
            self.options.log(f"[measure] {', '.join(floats)}: post-training int8, {len(test)} test samples in "
                             f"TFLite Micro, on {cfg.target.board}")
            metrics = {}
            for name, result in floats.items():
                tflite = _convert(result.model, data, cfg, cfg.convert.representative_samples)
                metrics[name] = _board_figures(tflite, cfg, test)
            record = self._finish("measure", key, metrics, started)
        self.records["measure"] = record

    def compress(self, tflite: _Result, data, cfg: config.Config) -> _Result:
        """LUT-compress the verified model; its TFLM outputs must equal the verified model's on the test split
        (TFLite's interpreter cannot run TFLM's DECODE op, so TFLM against itself is the check)."""
        from tinykd.lut import compress
        from tinykd.verify import quantize_input

        key = artifacts.key("compress", config.as_dict(cfg.compress), cfg.verify.max_samples, cfg.target.board,
                            tflite.record["run_id"], data.fingerprint)
        path = self.run_dir.dir("compress") / "model.tflite"
        record = self._cached("compress", key, path)
        if record is None:
            started = time.time()
            given = self.records["convert"]["metrics"]["input"]
            test = data.test.head(cfg.verify.max_samples)
            self.options.log(f"[compress] LUT compression, checked on {len(test)} test samples in TFLite Micro")
            result = compress(tflite.model, bits=cfg.compress.bits, check_inputs=quantize_input(
                test.x, {"scales": [given["scale"]], "zero_points": [given["zero_point"]]}))
            artifacts.write_bytes(path, result.tflite)
            metrics = {"tflite_bytes_before": len(tflite.model), "tflite_bytes": len(result.tflite),
                       "saved_fraction": round(1.0 - len(result.tflite) / len(tflite.model), 4),
                       "decompression_memory_bytes": result.decompression_memory_bytes,
                       "identical_outputs": result.identical_outputs, "checked_samples": result.checked_samples,
                       "compressed_tensors": sum(1 for t in result.tensors if t.bits is not None),
                       "tensors": [config.plain(t.__dict__) for t in result.tensors],
                       "board": _board_figures(result.tflite, cfg)}
            record = self._finish("compress", key, metrics, started)
        self.records["compress"] = record
        return _Result(path.read_bytes(), record)

    def export(self, tflite: _Result, verification: _Result, data, cfg: config.Config) -> None:
        from tinykd.export import FirmwareSpec, export

        decompression = self.records["compress"]["metrics"]["decompression_memory_bytes"] \
            if "compress" in self.records else 0
        spec = FirmwareSpec(name=cfg.export_name, labels=data.labels,
                            arena_bytes=verification.model["board_report"]["arena_bytes"] + decompression,
                            decompression_memory_bytes=decompression,
                            raw_scale=data.preprocessing.raw_scale, raw_offset=data.preprocessing.raw_offset,
                            raw_description=data.preprocessing.description)
        key = artifacts.key("export", config.plain(spec.__dict__) | {"stream": config.plain(cfg.stream.__dict__)},
                            tflite.record["run_id"])
        record = self._cached("export", key)
        if record is None:
            started = time.time()
            out_dir = self.run_dir.dir("export")
            files = export(tflite.model, spec, out_dir, frontend=cfg.frontend, golden_clip=_golden_clip(data),
                           stream=cfg.stream)
            metrics = {"file_count": len(files), "files": [f.name for f in files]}
            if cfg.frontend is not None:
                metrics["frontend_parity"] = _frontend_parity(out_dir / f"{spec.name}_model_settings.h", data)
            record = self._finish("export", key, metrics, started)
        self.records["export"] = record


def _schedule(section, cfg: config.Config, options: BuildOptions, seed: int | None = None):
    from tinykd.distill import Schedule

    return Schedule.of(section, seed=cfg.seed if seed is None else seed, verbose=options.verbose,
                       augment=cfg.data.augment)


def _pin_input_to_frontend(model, representative: np.ndarray, cfg: config.Config) -> np.ndarray:
    """Make the converted input scale and zero point the front-end's (1/256, -128), so the firmware copies its
    int8 features straight into the input tensor: QAT's input quantizer is pinned to the int8 grid's range,
    and calibration (post-training quantization) sees both ends of it."""
    from tinykd.audio import to_model_input
    from tinykd.quantize import fix_input_range

    low, high = (float(to_model_input(np.array([edge], dtype=np.int8))[0]) for edge in (-128, 127))
    if cfg.quantize is not None:
        fix_input_range(model, low, high)
    edges = np.stack([np.full(representative.shape[1:], low), np.full(representative.shape[1:], high)])
    return np.concatenate([edges.astype(representative.dtype), representative])


def _check_frontend_input(info, path: Path) -> None:
    from tinykd.audio import INPUT_SCALE, INPUT_ZERO_POINT

    given = info.inputs[0]
    if given.scale != INPUT_SCALE or given.zero_point != INPUT_ZERO_POINT:
        raise ConversionError(
            f"{path}: the converted input has scale {given.scale} and zero point {given.zero_point}, not the "
            f"front-end's {INPUT_SCALE} and {INPUT_ZERO_POINT}, so the firmware's int8 features would not be the "
            "model's input. This is a tinykd bug; please report it with the recipe.")


def _golden_clip(data) -> np.ndarray | None:
    """The first test clip of a keyword (not silence or unknown), for the firmware's golden vectors."""
    if data.test_audio is None:
        return None
    keyword = [i for i, label in enumerate(data.labels) if not label.startswith("_")]
    index = next((i for i, y in enumerate(data.test.y) if y in keyword), 0)
    return data.test_audio[index].astype(np.int16)


def _frontend_parity(settings_header: Path, data) -> dict:
    """Recompute every test clip's features from the exported settings alone and compare with the training
    features; a setting lost or changed on the way to model_settings.h fails the build."""
    from tinykd.audio import INPUT_SCALE, INPUT_ZERO_POINT, features, parse_settings, to_int8
    from tinykd.verify import quantize_input

    exported = parse_settings(settings_header.read_text())
    recomputed = to_int8(features(data.test_audio, exported))
    trained = quantize_input(data.test.x, {"scales": [INPUT_SCALE], "zero_points": [INPUT_ZERO_POINT]})[..., 0]
    identical = int(np.sum(np.all(recomputed == trained, axis=(1, 2))))
    if identical != len(trained):
        raise ExportError(f"{settings_header}: the exported front-end settings give different features from the "
                          f"training features on {len(trained) - identical} of {len(trained)} test clips")
    return {"test_clips": len(trained), "identical_clips": identical}


def _uses_teacher_logits(cfg: config.Config) -> bool:
    """Whether distillation feeds precomputed teacher logits (no augmentation, alpha above 0)."""
    augmenting = cfg.data.augment is not None and cfg.data.augment.active
    return cfg.distill.alpha > 0.0 and not augmenting


def _teacher_key(teacher_cfg, data) -> str:
    """What a trained teacher depends on: its config (an ensemble member's weight aside) and the data."""
    source = Path(teacher_cfg.path).expanduser() if teacher_cfg.path else None
    settings = config.as_dict(teacher_cfg)
    settings.pop("weight", None)
    return artifacts.key("teacher", settings, data.fingerprint, _source_stamp(source) if source else None)


def _trained_teacher(data, teacher_cfg, cfg: config.Config, options: BuildOptions):
    from tinykd.distill import train_on_labels

    teacher = models.build(teacher_cfg.model, data.input_shape, data.num_classes, "teacher")
    return train_on_labels(teacher, data, _schedule(teacher_cfg, cfg, options, seed=teacher_cfg.seed))


def _distilled(teacher, feature_teacher, data, cfg: config.Config, options: BuildOptions):
    """Round 1 learns from the teacher(s); each further round ("born-again") from the previous round's student,
    frozen, on the logits term only (hint and attention layers name the teacher's layers)."""
    from dataclasses import replace

    from tinykd.distill import accuracy, distill
    from tinykd.prune import clone

    schedule = _schedule(cfg.distill, cfg, options)
    student = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student")
    distill(teacher, student, data, cfg.distill, schedule, feature_teacher=feature_teacher)
    rounds = [{"round": 1, "val_accuracy": accuracy(student, data.val), "test_accuracy": accuracy(student, data.test)}]
    for number in range(2, cfg.distill.rounds + 1):
        previous = clone(student)
        options.log(f"[distill] born-again round {number} of {cfg.distill.rounds}: the round {number - 1} student "
                    "teaches a fresh one")
        student = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student")
        distill(previous, student, data, replace(cfg.distill, hints=(), attention=()),
                replace(schedule, seed=schedule.seed + number - 1))
        rounds.append({"round": number, "val_accuracy": accuracy(student, data.val),
                       "test_accuracy": accuracy(student, data.test)})
    return student, ({"rounds": rounds} if cfg.distill.rounds > 1 else {})


def _pruned(student, teacher, feature_teacher, data, cfg: config.Config, options: BuildOptions):
    from tinykd.prune import prune, prune_structured, sparsity, within_budget

    schedule = _schedule(cfg.prune, cfg, options)
    if cfg.prune.method == "structured":
        board = (cfg.prune.budget.board if cfg.prune.budget else None) or cfg.target.board
        pruned, steps = prune_structured(student, teacher, data, cfg.prune, cfg.distill, schedule,
                                         measure=lambda model: _budget_figures(model, data, cfg, board),
                                         feature_teacher=feature_teacher)
        for step in steps[1:]:
            options.log(f"[prune] step {step['step']}: {step['macs']:,} MACs, {step['tflite_bytes']:,} B, "
                        f"{step['latency_ms']:.2f} ms on {board}, val {step['val_accuracy']:.4f}"
                        + ("" if step["kept"] else " (over max_accuracy_drop: undone)")
                        + (f"; after {step['rewind_epochs']} rewind epochs val {step['rewound_val_accuracy']:.4f}"
                           if "rewind_epochs" in step else ""))
        return pruned, {"method": "structured", "sparsity": round(sparsity(pruned), 4), "steps": steps,
                        "budget_board": board,
                        "budget_met": None if cfg.prune.budget is None
                        else within_budget(cfg.prune.budget, [s for s in steps if s["kept"]][-1])}
    pruned = prune(student, teacher, data, cfg.prune, cfg.distill, schedule, feature_teacher=feature_teacher)
    return pruned, {"method": "magnitude", "sparsity": round(sparsity(pruned), 4)}


def _budget_figures(model, data, cfg: config.Config, board: str) -> dict:
    """MACs, and the int8 .tflite bytes and latency estimate of `tinykd report` (post-training quantized on 100
    training samples: the figures QAT does not change)."""
    from tinykd.report import report

    tflite = _convert(model, data, cfg, 100)
    estimate = report(tflite, board)
    return {"macs": models.count_macs(model), "tflite_bytes": len(tflite), "latency_ms": round(estimate.latency_ms, 3)}


def _convert(model, data, cfg: config.Config, samples: int, qat: bool = False) -> bytes:
    """Full-int8 .tflite of `model`, calibrated on `samples` seeded training samples: post-training quantization
    for a float model, learned ranges for a QAT one (`qat`)."""
    from dataclasses import replace

    from tinykd.convert import convert

    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(data.train), size=min(samples, len(data.train)), replace=False)
    representative = data.train.x[np.sort(picks)]
    if cfg.frontend is not None:
        # A float model has no QAT quantizer to pin: only calibration sees the front-end's int8 range.
        representative = _pin_input_to_frontend(model, representative, cfg if qat else replace(cfg, quantize=None))
    return convert(model, representative)


def _board_figures(tflite: bytes, cfg: config.Config, test=None) -> dict:
    """What the recipe's board needs for an int8 model, from `tinykd report` (flash = model + TFLM runtime code;
    RAM = arena + runtime state; the arena includes any decompression memory), its gzip size (information only:
    TFLM cannot run a gzipped model) and, given a test split, its top-1 accuracy measured in TFLM."""
    from tinykd.report import report
    from tinykd.verify import verify

    estimate = report(tflite, cfg.target.board)
    figures = {"tflite_bytes": len(tflite), "gzip_bytes": _gzip_bytes(tflite), "flash_bytes": estimate.flash_bytes,
               "arena_bytes": estimate.arena_bytes, "ram_bytes": estimate.ram_bytes,
               "latency_ms": round(estimate.latency_ms, 3)}
    if test is not None:
        figures["tflm_accuracy"] = verify(tflite, test, arena_bytes=estimate.arena_host_bytes).tflm_accuracy
    return figures


def _gzip_bytes(tflite: bytes) -> int:
    return len(gzip.compress(tflite, compresslevel=9, mtime=0))


def _clustered(student, teacher, feature_teacher, data, cfg: config.Config, options: BuildOptions):
    from tinykd.cluster import cluster, unique_kernel_values

    clustered = cluster(student, teacher, data, cfg.cluster.clusters, cfg.distill,
                        _schedule(cfg.cluster, cfg, options), feature_teacher=feature_teacher)
    return clustered, {"most_values_per_kernel": max(unique_kernel_values(clustered).values())}


def _quantized(student, teacher, feature_teacher, data, cfg: config.Config, options: BuildOptions):
    from tinykd.quantize import quantize

    qat = quantize(student, teacher, data, cfg.distill, _schedule(cfg.quantize, cfg, options),
                   scheme=_qat_scheme(cfg), feature_teacher=feature_teacher)
    return qat, {}


def _qat_scheme(cfg: config.Config):
    """The QAT scheme that keeps what earlier stages made: magnitude pruning's zeros, clustering's shared values."""
    from tinykd.cluster import quantize_scheme

    return quantize_scheme(clustered=cfg.cluster is not None,
                           preserve_sparsity=cfg.prune is not None and cfg.prune.method == "magnitude")


def _reload_qat(student, path: Path, cfg: config.Config):
    """The saved QAT model. Cluster-preserving quantizers do not survive Keras' config round trip (tf-keras 2.21 +
    TFMOT 0.8.1 rebuild them with fewer variables), so a clustered one is rebuilt from its float student and
    given the saved weights."""
    if cfg.cluster is None:
        return _load(path)
    from tinykd.quantize import quantization_aware

    model = quantization_aware(student, _qat_scheme(cfg))
    model.load_weights(path)
    return model


def _model_metrics(model, data) -> dict:
    from tinykd.distill import accuracy

    return {"val_accuracy": accuracy(model, data.val), "test_accuracy": accuracy(model, data.test),
            "params": int(model.count_params()), "macs": models.count_macs(model)}


def _load(path: Path):
    from tinykd.quantize import load_model

    return load_model(path)


def _load_teacher(source: Path, data):
    """A user's trained teacher, checked against the data it will teach on."""
    if not source.exists():
        raise ModelError(f"teacher.path: {source} does not exist; give a .keras file or a SavedModel folder, "
                         "or remove teacher.path to train one")
    try:
        model = _load(source)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for unreadable models
        raise ModelError(f"teacher.path: cannot load {source} as a Keras model ({error}); save it with "
                         "model.save('teacher.keras')") from None
    if tuple(model.input_shape[1:]) != tuple(data.input_shape) or model.output_shape[-1] != data.num_classes:
        raise ModelError(f"teacher.path: {source} takes {tuple(model.input_shape[1:])} and gives "
                         f"{model.output_shape[-1]} outputs, but the data has inputs {data.input_shape} and "
                         f"{data.num_classes} classes")
    return model


def _float_tflite(model) -> bytes:
    from tinykd.convert import convert_float

    return convert_float(model)


def _source_stamp(path: Path) -> list:
    """Identify a user's teacher file by size and modification time (hashing a SavedModel folder is slow)."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _tensor(info) -> dict:
    return {"shape": list(info.shape), "dtype": info.dtype, "scale": info.scale, "zero_point": info.zero_point}
