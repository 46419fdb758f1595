"""The public Python API (`import tinykd`): the names and results of the `tinykd` command, on real components."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinykd
from tinykd.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[1]
SMOKE_RECIPE = REPO / "pipelines" / "smoke.yaml"
CALLABLE_MODULES = ("report", "export", "convert")


def tinykd_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinykd", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=900, **kwargs)


def test_every_public_name_is_documented_and_import_stays_free_of_tensorflow(shared_models):
    for name in tinykd.__all__:
        value = getattr(tinykd, name)
        assert (callable(value) or name == "keras") and (value.__doc__ or "").strip(), name
        if name in CALLABLE_MODULES:  # the module's docstring, and the call's own
            assert (type(value).__call__.__doc__ or "").strip(), name
    code = ("import sys, tinykd; r = tinykd.report(sys.argv[1], 'nucleo-l4r5zi'); "
            "tinykd.report_text(r, 'md'); print(type(r).__name__, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(shared_models / "kws_ref_model.tflite")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Report", "False"]


def test_callable_stage_modules_stay_modules():
    # `from tinykd import export` (pipeline.py does) must keep giving the stage module, and the public verb must
    # survive the module's import: both are the same object.
    from tinykd import convert, export, report

    for name, module in zip(CALLABLE_MODULES, (report, export, convert)):
        assert getattr(tinykd, name) is module is sys.modules[f"tinykd.{name}"] and callable(module)
    assert export.export_model and report.Report and convert.convert


def test_load_recipe_takes_overrides_as_a_dict_or_as_set_strings():
    from_dict = tinykd.load_recipe(SMOKE_RECIPE, {"distill.temperature": 6, "distill.student.filters": [4, 8]})
    from_set = tinykd.load_recipe(str(SMOKE_RECIPE), ["distill.temperature=6", "distill.student.filters=[4, 8]"])
    assert from_dict == from_set
    assert from_dict.distill.temperature == 6.0 and from_dict.distill.student.filters == (4, 8)
    assert tinykd.load_recipe(SMOKE_RECIPE, smoke=True).name == "smoke-smoke"
    with pytest.raises(ConfigError, match=r"--set distill\.temperatur=6: .*temperature"):
        tinykd.load_recipe(SMOKE_RECIPE, {"distill.temperatur": 6})
    with pytest.raises(ConfigError, match="overrides and smoke apply when the recipe is loaded"):
        tinykd.build(from_dict, "unused", smoke=True)


def test_report_returns_what_the_command_prints(shared_models, tmp_path):
    model = shared_models / "kws_ref_model.tflite"
    one = tinykd.report(model, "nucleo-l4r5zi")
    assert isinstance(one, tinykd.report.Report) and one.board == "nucleo-l4r5zi" and one.fits
    several = tinykd.report(model.read_bytes(), ["ek-ra8d1", "nucleo-l4r5zi"])
    assert [r.board for r in several] == ["ek-ra8d1", "nucleo-l4r5zi"] and several[1] == one
    every = tinykd.report(model)
    assert [r.board for r in every] == list(tinykd.report.load_boards())

    done = tinykd_cli("report", model, "--board", "ek-ra8d1", "--board", "nucleo-l4r5zi", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(tinykd.report_text(several, "json")) == json.loads(done.stdout)
    done = tinykd_cli("report", model, "--board", "nucleo-l4r5zi", "--format", "md")
    assert tinykd.report_text(one, "md", source=model.name) == done.stdout
    done = tinykd_cli("report", model, "--board", "nucleo-l4r5zi")
    assert tinykd.report_text([one], source=model.name) + "\n" == done.stdout

    figures = tinykd.report_plots(several, tmp_path / "plots", source=model.name)
    assert [len(figure.axes) for figure in figures] == [1, 2]
    assert [p.name for p in sorted((tmp_path / "plots").iterdir())] == ["latency_per_layer.png",
                                                                         "memory_per_board.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in (tmp_path / "plots").iterdir())


def test_report_errors_name_the_problem(shared_models, tmp_path):
    with pytest.raises(ConfigError, match="boards: unknown board 'esp32'; known boards: .*nucleo-l4r5zi"):
        tinykd.report(shared_models / "kws_ref_model.tflite", ["esp32"])
    with pytest.raises(ModelError, match="missing.tflite: cannot read the model file"):
        tinykd.report(tmp_path / "missing.tflite")
    with pytest.raises(ConfigError, match="format: 'html' is not one of table, json, md"):
        tinykd.report_text([], "html")


def test_export_writes_the_same_files_as_the_command(shared_models, tmp_path):
    model = shared_models / "kws_ref_model.tflite"
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"word{i}\n" for i in range(12)), encoding="utf-8")
    done = tinykd_cli("export", model, "-o", tmp_path / "cli", "--labels", labels, "--layout", "cmake",
                      "--board", "ek-ra8d1", "--name", "kws")
    assert done.returncode == 0, done.stderr
    paths = tinykd.export(model, tmp_path / "api", name="kws", labels=labels, layout="cmake", board="ek-ra8d1")
    written = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path / "api") for p in paths) == written
    for relative in written:
        assert (tmp_path / "api" / relative).read_bytes() == (tmp_path / "cli" / relative).read_bytes(), relative
    # The model as bytes and the labels as a list give the same files; without a name, bytes are "model".
    tinykd.export(model.read_bytes(), tmp_path / "bytes", name="kws", labels=[f"word{i}" for i in range(12)],
                  layout="cmake", board="ek-ra8d1")
    for relative in written:
        assert (tmp_path / "bytes" / relative).read_bytes() == (tmp_path / "cli" / relative).read_bytes(), relative
    assert tinykd.export(model.read_bytes(), tmp_path / "unnamed")[0].name == "model_model_data.h"
    with pytest.raises(ConfigError, match="board: unknown board 'esp32'"):
        tinykd.export(model, tmp_path / "never", board="esp32")
    assert not (tmp_path / "never").exists()


def small_models(seed: int = 0):
    """A teacher and a student of your own, in Keras 2 (tf_keras) as tinykd uses, with named layers."""
    from tinykd.keras_shim import keras

    keras.utils.set_random_seed(seed)

    def model(name: str, channels: int):
        inputs = keras.Input((12, 12, 1))
        x = keras.layers.Conv2D(channels, 3, activation="relu", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)

    return model("teacher", 8), model("student", 4)


def test_distiller_fit_trains_the_student_and_never_the_teacher():
    teacher, student = small_models()
    rng = np.random.default_rng(0)
    x = rng.random((64, 12, 12, 1), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    distiller = tinykd.Distiller(student, teacher, temperature=3.0, alpha=0.7, hints=[("conv", "conv")])
    from tinykd.config import HintConfig
    from tinykd.keras_shim import keras

    assert distiller.pairs[0][2] == HintConfig(student_layer="conv", teacher_layer="conv")

    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert set(history.history) == {"loss", "accuracy"} and np.isfinite(history.history["loss"]).all()
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert all(not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights()))

    tflite = tinykd.convert(student, x[:16])  # the trained student alone, full int8
    assert tinykd.report(tflite, "nucleo-l4r5zi").precision == "int8"


def test_distiller_rejects_bad_arguments_naming_them():
    teacher, student = small_models()
    with pytest.raises(ConfigError, match=r"hints\[0\]: expected a \(student_layer, teacher_layer\) pair"):
        tinykd.Distiller(student, teacher, hints=["conv"])
    with pytest.raises(ConfigError, match=r"attention\[0\]: weight -1 must be a positive number"):
        tinykd.Distiller(student, teacher, attention=[("conv", "conv", -1)])
    with pytest.raises(ConfigError, match=r"hints\[0\]\.student_layer: no layer 'nope' in student; its layers are"):
        tinykd.Distiller(student, teacher, hints=[("nope", "conv")])
    with pytest.raises(ConfigError, match="temperature: 0.5 must be at least 1"):
        tinykd.Distiller(student, teacher, temperature=0.5)
    with pytest.raises(ConfigError, match="alpha: 2 must be in"):
        tinykd.Distiller(student, teacher, alpha=2)


def test_build_is_the_command_s_build(tmp_path):
    lines = []
    result = tinykd.build(SMOKE_RECIPE, tmp_path / "runs", log=lines.append)
    assert result.run_dir == tmp_path / "runs" / "smoke"
    assert any(line.startswith("[data] ") for line in lines) and any("[convert] done" in line for line in lines)
    assert 0.0 < result.tflm_accuracy <= 1.0 and result.tflite_bytes == len(
        (result.run_dir / "convert/model.tflite").read_bytes())
    assert json.loads((result.run_dir / "report.json").read_text()) == json.loads(json.dumps(result.report))
    assert tinykd.report(result.run_dir / "convert/model.tflite", "nucleo-l4r5zi").fits
    # The command finds every stage the API built unchanged: same recipe, same stage keys, nothing redone.
    done = tinykd_cli("build", SMOKE_RECIPE, "--runs", tmp_path / "runs")
    assert done.returncode == 0, done.stderr
    assert "[convert] unchanged" in done.stdout and "] running" not in done.stdout, done.stdout
    with pytest.raises(ConfigError, match="--force quantise: no such stage"):
        tinykd.build(SMOKE_RECIPE, tmp_path / "runs", force=["quantise"])
