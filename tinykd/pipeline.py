"""`tinykd build`: teacher -> distilled student -> pruned -> INT8 QAT -> full-int8 .tflite -> TFLM check -> C files.

This module only orders the stages; each stage lives in the module of its name and runs through `Run.step`
(tinykd.artifacts): it writes to `runs/<name>/<stage>/` and finishes with a record of its inputs' key. A stage
whose key is unchanged is not redone, `force` redoes named stages, and every stage after a redone one is redone.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tinykd import build_report, cluster, compress, config, convert, data as data_layer, distill, distribute, export
from tinykd import manifest, measure, prune, quantize, teacher, verify
from tinykd.artifacts import Run
from tinykd.errors import ConfigError, ReproducibilityError

STAGES = ("teacher", "ensemble", "distill", "prune", "cluster", "quantize", "convert", "verify", "measure", "compress",
          "export", "report")
OPTIONAL_STAGES = ("ensemble", "cluster", "compress")  # run only when the recipe has the section


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to run a build, as opposed to what to build (the recipe)."""

    force: tuple[str, ...] = ()
    data_dirs: tuple[Path, ...] = ()
    verbose: int = 0
    log: Callable[[str], None] = lambda message: None
    tflm_dir: Path | None = None  # TFLM tree for verify.firmware; None: tinykd.firmware.SHARED_TFLM


@dataclass(frozen=True)
class BuildResult:
    """A finished build: its folder and its report (the contents of runs/<name>/report.json)."""

    run_dir: Path
    report: dict
    chief: bool = True  # False on a multi_worker worker that only trained: its run_dir is gone, its report empty

    @property
    def teacher_accuracy(self) -> float:
        return self.report["stages"][0]["test_accuracy"]

    @property
    def tflm_accuracy(self) -> float:
        return self.report["int8"]["tflm_accuracy"]

    @property
    def tflite_bytes(self) -> int:
        return self.report["int8"]["tflite_bytes"]

    @property
    def arena_bytes(self) -> int:
        """The TFLM arena measured on this 64-bit host."""
        return self.report["int8"]["arena_bytes_host"]


def build(cfg: config.Config, runs_dir: Path, options: BuildOptions = BuildOptions()) -> BuildResult:
    """Run every stage of the recipe, reusing finished ones; the report is also in runs/<name>/report.json.

    With `distribute.strategy: multi_worker` every worker calls this with the same recipe: each trains every
    training stage afresh (no stage or cached teacher is reused, so no worker skips a collective another waits in);
    the chief writes runs/<name>/ and goes on alone with the stages that do not train, the others write into a
    temporary folder that is removed when they are done.
    """
    unknown = set(options.force) - set(STAGES)
    if unknown:
        raise ConfigError(f"--force {', '.join(sorted(unknown))}: no such stage; stages are {', '.join(STAGES)}")
    # 0. distribute: the strategy for every training run; multi_worker waits here until TF_CONFIG's workers join
    where = distribute.start(cfg.distribute.strategy)
    if cfg.distribute.strategy != "default":
        options.log(f"[distribute] {where.describe()}")
    if cfg.distribute.strategy != "multi_worker":
        return _build(cfg, Run(Path(runs_dir) / cfg.name, options.force, log=options.log, verbose=options.verbose),
                      options, where)
    if where.chief:
        result = _build(cfg, Run(Path(runs_dir) / cfg.name, STAGES, log=options.log, verbose=options.verbose),
                        options, where)
    else:
        with tempfile.TemporaryDirectory(prefix=f"tinykd-{where.task_type}{where.task_index}-") as scratch:
            result = _build(cfg, Run(Path(scratch) / cfg.name, STAGES, log=options.log, verbose=options.verbose),
                            options, where)
    # Every worker waits here for the chief's last stage, so the job ends when the build does and no worker leaves
    # while TensorFlow's coordination service still counts on it (the chief would log it as crashed).
    distribute.barrier(cfg.distribute.strategy)
    return result


def _build(cfg: config.Config, run: Run, options: BuildOptions, where: distribute.Cluster) -> BuildResult:
    """The stages in order; a multi_worker worker that is not the chief stops after the last training stage."""
    # 1. data: every split in memory, with a fingerprint of the files and the split
    data = data_layer.load(cfg.data, cfg.data.seed, options.data_dirs, frontend=cfg.frontend)
    options.log(f"[data] {data.source}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test, "
                f"input {data.input_shape}, {data.num_classes} classes"
                + (f"; skipped {len(data.skipped)} unreadable files" if data.skipped else ""))

    # 2. teacher: trained once per (teacher config, data) and cached across runs, or loaded from teacher.path;
    #    with distill.ensemble, more teachers (cached the same way) whose soft targets are averaged with its own
    teachers = teacher.stage(run, cfg, data)

    # 3. distill: a fresh student learns from the frozen teacher's soft targets (and hints, attention, rounds)
    student = distill.stage(run, cfg, data, teachers)
    floats = {"distill": student}  # the float model after each stage, measured as int8 too (verify.per_stage)

    # 4. prune: magnitude pruning to the target sparsity, or structured to a budget, still distilling
    if cfg.prune is not None:
        student = floats["prune"] = prune.stage(run, cfg, data, teachers.teaching, student)

    # 5. cluster: shared weight values per kernel, so LUT compression can store indices (with `compress:`)
    if cfg.cluster is not None:
        student = floats["cluster"] = cluster.stage(run, cfg, data, teachers.teaching, student)

    # 6. quantize: INT8 quantization-aware training, still distilling (keeping zeros and clusters)
    if cfg.quantize is not None:
        student = quantize.stage(run, cfg, data, teachers.teaching, student)

    if cfg.distribute.strategy == "multi_worker":
        # Every worker logs what it trained, so identical weights on every worker can be checked from the logs.
        trained = {"teacher": teachers.teaching.teacher} | {name: done.model for name, done in floats.items()}
        for name, model in (trained | {"final": student.model}).items():
            options.log(f"[distribute] {name} weights sha256 {distribute.fingerprint(model)}")
        if not where.chief:
            return BuildResult(run.root, {}, chief=False)

    # 7. convert: full-int8 .tflite, calibrated on training samples; fails naming any float op
    model = convert.stage(run, cfg, data, student)

    # 8. verify: the whole test split in TFLite Micro and in TFLite's reference kernels; TFLM accuracy is reported
    verified = verify.stage(run, cfg, data, model)

    # 9. measure: each float stage's model, post-training quantized, in TFLM and on the board (what each bought)
    if cfg.verify.per_stage:
        measure.stage(run, cfg, data, floats)

    # 10. compress: TFLite Micro's LUT compression, with TFLM outputs identical to the verified model's
    if cfg.compress is not None:
        model = compress.stage(run, cfg, data, model)

    # 11. export: C/C++ files for TFLite Micro firmware
    export.stage(run, cfg, data, model, verified, options.tflm_dir)

    # 12. report: accuracy at every stage, size, arena, time; JSON, Markdown and a plot
    report = build_report.write(run, cfg, data, run.records)

    # 13. manifest: the recipe, sha256 of the data read and of every file written, versions (build --check)
    manifest.write(run.root, cfg, options.data_dirs)
    return BuildResult(run.root, report)


def check(cfg: config.Config, runs_dir: Path, options: BuildOptions = BuildOptions()) -> Path:
    """Rebuild `cfg` from scratch in a temporary folder (no reused stage, no cached teacher) and compare it with
    `runs_dir/<name>/manifest.json`; returns the manifest's path.

    Raises:
        ReproducibilityError: naming every artifact or input that differs.
    """
    if cfg.distribute.strategy == "multi_worker":
        raise ConfigError("build --check: a check rebuilds on this machine alone; run it with "
                          "--set distribute.strategy=default")
    path = Path(runs_dir) / cfg.name / manifest.NAME
    expected = manifest.read(path)
    with tempfile.TemporaryDirectory(prefix="tinykd-check-") as folder:
        build(cfg, Path(folder), options)
        rebuilt = manifest.read(Path(folder) / cfg.name / manifest.NAME)
    found = manifest.differences(expected, rebuilt)
    if found:
        raise ReproducibilityError(f"a rebuild from scratch differs from {path}: {'; '.join(found)}")
    return path
