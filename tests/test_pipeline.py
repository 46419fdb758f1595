"""`tinykd build` end to end on the smoke recipe: artifacts, caching, --force, resume after a kill, every recipe."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SMOKE_RECIPE
from tinykd import config
from tinykd.errors import ModelError
from tinykd.pipeline import OPTIONAL_STAGES, STAGES, BuildOptions, build

TINYKD = [sys.executable, "-m", "tinykd"]


class Log(list):
    def __call__(self, message):
        self.append(message)

    def ran(self, stage):
        return any(line.startswith(f"[{stage}] done") for line in self)

    def reused(self, stage):
        return any(line.startswith(f"[{stage}] unchanged") for line in self)


def run_build(runs, overrides=(), force=()):
    log = Log()
    cfg = config.load(SMOKE_RECIPE, config.parse_overrides(overrides))
    report = build(cfg, runs, BuildOptions(force=tuple(force), log=log)).report
    return report, log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def first(runs):
    return run_build(runs)


def test_first_build_runs_every_stage_and_writes_the_report(first, runs):
    report, log = first
    assert all(log.ran(stage) for stage in STAGES if stage not in ("report", *OPTIONAL_STAGES))
    assert not any(log.ran(stage) for stage in OPTIONAL_STAGES)
    run = runs / "smoke"
    for stage in ("teacher", "distill", "prune", "quantize", "convert", "verify", "export"):
        assert (run / stage / "stage.json").is_file(), stage
    assert (run / "convert" / "model.tflite").read_bytes()[4:8] == b"TFL3"
    saved = json.loads((run / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert [s["stage"] for s in report["stages"]] == ["teacher", "distill", "prune", "quantize", "int8"]
    for stage in report["stages"]:
        assert 0.0 <= stage["test_accuracy"] <= 1.0 and stage["params"] > 0 and stage["macs"] > 0
    int8 = report["int8"]
    assert int8["tflite_bytes"] == len((run / "convert" / "model.tflite").read_bytes())
    assert int8["tflm_tflite_top1_agreement"] == 1.0
    assert int8["arena_bytes_host"] > 0 and int8["test_samples"] == 200
    assert report["stages"][2]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert (run / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (run / "report.md").read_text()
    assert "student int8 (TFLite Micro)" in markdown and "nucleo-l4r5zi" in markdown
    assert sorted(report["files"]) == sorted(p.name for p in (run / "export").glob("smoke_*"))


def test_every_stage_is_measured_as_int8_on_the_board(first, runs):
    """The float stages' models, post-training quantized, in TFLM and on the recipe's board; magnitude pruning's
    zeros change neither bytes, flash, RAM nor latency there, only the gzip size."""
    from tinykd import convert, data as data_layer
    from tinykd.report import report as board_report
    from tinykd.verify import verify

    report, _ = first
    rows = {stage["stage"]: stage for stage in report["stages"]}
    assert rows["teacher"]["int8"] is None and rows["quantize"]["int8"] is None
    distilled, pruned, shipped = rows["distill"]["int8"], rows["prune"]["int8"], rows["int8"]["int8"]
    assert distilled["kind"] == pruned["kind"] == "post-training quantized"
    for key in ("tflite_bytes", "flash_bytes", "ram_bytes", "arena_bytes", "latency_ms"):
        assert pruned[key] == distilled[key], key
    assert pruned["gzip_bytes"] < distilled["gzip_bytes"] < distilled["tflite_bytes"]
    assert shipped["tflite_bytes"] == report["int8"]["tflite_bytes"]
    assert shipped["tflm_accuracy"] == report["int8"]["tflm_accuracy"]
    assert shipped["flash_bytes"] == report["board"]["flash_bytes"] and shipped["latency_ms"] == report["board"]["latency_ms"]
    # The pruned row is the pruned float model converted again and measured again, here, independently.
    from tinykd.models import load_model as _load

    cfg = config.load(SMOKE_RECIPE)
    data = data_layer.load(cfg.data, cfg.data.seed)
    picks = np.sort(np.random.default_rng(cfg.seed).choice(len(data.train), cfg.convert.representative_samples,
                                                           replace=False))
    tflite = convert.convert(_load(runs / "smoke" / "prune" / "prune.keras"), data.train.x[picks])
    assert len(tflite) == pruned["tflite_bytes"]
    assert verify(tflite, data.test).tflm_accuracy == pruned["tflm_accuracy"]
    assert board_report(tflite, cfg.target.board).flash_bytes == pruned["flash_bytes"]
    markdown = (runs / "smoke" / "report.md").read_text()
    assert f"| {pruned['tflm_accuracy']:.2%} | {pruned['tflite_bytes']:,} B ({pruned['gzip_bytes']:,}) |" in markdown


def test_int8_accuracy_is_measured_in_tflm(first, runs):
    from tinykd.data import load
    from tinykd.verify import verify

    report, _ = first
    cfg = config.load(SMOKE_RECIPE)
    data = load(cfg.data, cfg.data.seed)
    result = verify((runs / "smoke" / "convert" / "model.tflite").read_bytes(), data.test)
    assert report["int8"]["tflm_accuracy"] == result.tflm_accuracy == report["stages"][-1]["test_accuracy"]


def test_exported_c_compiles_for_cortex_m4(first, runs, tmp_path):
    compiler = shutil.which("arm-none-eabi-g++")
    assert compiler, "arm-none-eabi-g++ is required (make test installs gcc-arm-none-eabi)"
    export = runs / "smoke" / "export"
    main = tmp_path / "use_settings.cc"
    main.write_text('#include "smoke_model_settings.h"\n#include "smoke_model_data.h"\n'
                    "unsigned int probe() { return SMOKE_ARENA_BYTES + smoke_model_data_len + SMOKE_CLASS_COUNT; }\n")
    for source in (export / "smoke_model_data.cc", main):
        subprocess.run([compiler, "-mcpu=cortex-m4", "-mthumb", "-std=c++17", "-Wall", "-Werror", "-c",
                        f"-I{export}", str(source), "-o", str(tmp_path / (source.stem + ".o"))], check=True)
    resolver = (export / "smoke_op_resolver.h").read_text()
    ops = first[0]["int8"]["ops"]
    assert f"MicroMutableOpResolver<{len(ops)}>" in resolver or f"SMOKE_OP_COUNT = {len(ops)}" in resolver
    from tinykd.export import OP_RESOLVER_METHODS

    assert sorted(line.strip().split("(")[0].split(".")[-1] for line in resolver.splitlines()
                  if "resolver.Add" in line) == sorted(OP_RESOLVER_METHODS[op] for op in ops)


def test_rebuild_reuses_every_stage(first, runs):
    report, log = run_build(runs)
    assert all(log.reused(stage) for stage in STAGES if stage not in ("report", *OPTIONAL_STAGES))
    assert report["int8"] == first[0]["int8"]


def test_force_redoes_the_stage_and_everything_after(first, runs):
    _, log = run_build(runs, force=["quantize"])
    assert all(log.reused(s) for s in ("teacher", "distill", "prune"))
    assert all(log.ran(s) for s in ("quantize", "convert", "verify", "export"))


def test_changed_config_redoes_from_that_stage(first, runs):
    _, log = run_build(runs, overrides=["convert.representative_samples=16"])
    assert all(log.reused(s) for s in ("teacher", "distill", "prune", "quantize"))
    assert all(log.ran(s) for s in ("convert", "verify", "export"))


def test_teacher_is_shared_by_other_runs(first, runs):
    report, log = run_build(runs, overrides=["name=smoke-seed1", "seed=1"])
    assert any("reusing the teacher trained for this config and data" in line for line in log)
    assert report["stages"][0]["test_accuracy"] == first[0]["stages"][0]["test_accuracy"]
    assert (runs / "smoke-seed1" / "report.json").is_file()


def test_cached_teacher_keeps_its_logits_and_they_are_its_outputs(first, runs):
    import numpy as np

    from tinykd import data as data_layer
    from tinykd.quantize import load_model

    from tinykd.data import shards

    saved = list((runs / ".teacher_cache").glob("teacher-*.logits"))
    assert len(saved) == 1
    cfg = config.load(SMOKE_RECIPE)
    data = data_layer.load(cfg.data, cfg.data.seed)
    teacher = load_model(saved[0].with_name(saved[0].name.replace(".logits", ".keras")))
    logits = shards.read(saved[0])
    assert logits["train"].shape == (len(data.train), data.num_classes)
    np.testing.assert_allclose(logits["val"], teacher.predict(data.val.x, verbose=0), rtol=1e-5, atol=1e-5)


def test_unknown_force_stage_is_refused(runs):
    from tinykd.errors import ConfigError

    with pytest.raises(ConfigError, match="--force quantise: no such stage"):
        run_build(runs, force=["quantise"])


def test_baseline_recipe_without_kd_pruning_or_qat(runs):
    report, log = run_build(runs, overrides=["name=smoke-baseline", "distill.alpha=0", "prune=none",
                                             "quantize=none"])
    assert [s["stage"] for s in report["stages"]] == ["teacher", "distill", "int8"]
    assert not (runs / "smoke-baseline" / "prune").exists()
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0


def test_teacher_from_a_file(first, runs, tmp_path):
    from tinykd.quantize import load_model

    teacher_file = tmp_path / "my_teacher.keras"
    shutil.copy(runs / "smoke" / "teacher" / "teacher.keras", teacher_file)
    report, log = run_build(runs, overrides=["name=smoke-loaded", f"teacher.path={teacher_file}"])
    assert any(f"loading {teacher_file}" in line for line in log)
    assert report["stages"][0]["test_accuracy"] == first[0]["stages"][0]["test_accuracy"]
    assert load_model(runs / "smoke-loaded" / "teacher" / "teacher.keras").count_params() == \
        report["stages"][0]["params"]


def test_teacher_file_that_does_not_fit_the_data(runs, tmp_path):
    from tinykd import models
    from tinykd.config import ModelConfig

    wrong = models.build(ModelConfig(filters=(4,)), (32, 32, 3), 10, "wrong")
    wrong.save(tmp_path / "wrong.keras")
    with pytest.raises(ModelError, match=r"teacher.path: .*wrong.keras takes \(32, 32, 3\)"):
        run_build(runs, overrides=["name=smoke-wrong", f"teacher.path={tmp_path / 'wrong.keras'}"])


def cli(*args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([*TINYKD, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def test_killed_build_resumes_at_the_interrupted_stage(tmp_path):
    process = cli("build", str(SMOKE_RECIPE), "--runs", str(tmp_path), "--quiet")
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "[prune] running" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert not (tmp_path / "smoke" / "prune" / "stage.json").exists()
    (tmp_path / "smoke" / "prune" / ".prune.deadbeef.tmp.keras").write_bytes(b"half-written")  # as a kill leaves
    process = cli("build", str(SMOKE_RECIPE), "--runs", str(tmp_path), "--quiet")
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert "[distill] unchanged" in output and "[prune] running" in output and "[prune] done" in output
    assert (tmp_path / "smoke" / "report.json").is_file()
    assert not list((tmp_path / "smoke").rglob(".*.tmp*")), "temporary files of the killed build were left behind"


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "pipelines").glob("*.yaml")))
def test_every_recipe_builds_in_smoke_mode(recipe, tmp_path, request):
    cfg = config.load(REPO / "pipelines" / recipe, smoke=True)
    extra = []
    if cfg.data.format == "speech_commands":  # the recipe would synthesize the full set; a tiny one will do
        extra = ["--set", f"data.path={request.getfixturevalue('tiny_keywords')}",
                 "--set", "data.extra_train_speakers=0"]  # what the tiny set was made with
    process = cli("build", str(REPO / "pipelines" / recipe), "--smoke", "--runs", str(tmp_path), "--quiet", *extra)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output
    report = json.loads((tmp_path / cfg.name / "report.json").read_text())
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0
    assert "done: teacher" in output
    assert sum(sum(row) for row in report["classes"]["confusion"]) == report["int8"]["test_samples"]
    assert (tmp_path / cfg.name / "confusion.png").stat().st_size > 0
    if cfg.frontend is not None:
        _check_audio_build(tmp_path / cfg.name, report, cfg)


def _check_audio_build(run, report, cfg):
    """An audio build: the firmware's int8 features are the model input, and the export proves it."""
    from tinykd import audio

    assert report["int8"]["input"]["scale"] == audio.INPUT_SCALE
    assert report["int8"]["input"]["zero_point"] == audio.INPUT_ZERO_POINT
    parity = report["frontend_parity"]
    assert parity["identical_clips"] == parity["test_clips"] == report["int8"]["test_samples"]
    assert 0.0 <= report["classes"]["false_reject_rate"] <= 1.0
    assert 0.0 <= report["classes"]["false_accept_rate"] <= 1.0
    settings = (run / "export" / f"{cfg.export_name}_model_settings.h").read_text()
    assert audio.parse_settings(settings) == cfg.frontend
    assert (run / "export" / f"{cfg.export_name}_golden_vectors.h").is_file()
    # The recipe's stream section reaches the firmware's listening loop.
    from tinykd.audio.stream import threshold_level

    name = cfg.export_name.upper()
    assert f"{name}_STREAM_THRESHOLD_LEVEL = {threshold_level(cfg.stream.threshold)};" in settings
    assert f"{name}_STREAM_STRIDE_MS = {cfg.stream.stride_ms};" in settings
    assert (run / "export" / f"{cfg.export_name}_recognizer.h").is_file()
    # The board's estimated latency is weighed against the stride, from the report of the model it ships.
    listening = report["listening"]
    assert listening["stride_ms"] == cfg.stream.stride_ms
    assert listening["latency_range_ms"] == [round(ms, 1) for ms in report["board"]["latency_range_ms"]]
    assert "Listening: one inference every" in (run / "report.md").read_text()


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\ndistill:\n  temperatur: 6\n")
    process = cli("build", str(recipe))
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2
    assert output.strip().splitlines()[-1] == f"error: {recipe}: distill.temperatur: unknown key " \
                                             "(did you mean 'temperature'?)"


def test_help_does_not_import_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from tinykd.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'build' in r.output; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
