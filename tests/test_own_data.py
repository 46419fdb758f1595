"""The smoke recipe built from your own data: an image folder of mixed sizes and .npz arrays of every rank."""

import json
import re

import numpy as np
import pytest

from conftest import SMOKE_RECIPE
from test_data_sources import make_image_folder
from tinykd import config
from tinykd.pipeline import BuildOptions, build


def smoke_build(runs, overrides):
    cfg = config.load(SMOKE_RECIPE, config.parse_overrides(overrides))
    return build(cfg, runs, BuildOptions()).report


def test_image_folder_build_exports_its_preprocessing(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=30)
    broken = root / "owl" / "owl5.jpg"
    broken.write_bytes(b"\xff\xd8 truncated jpeg")
    report = smoke_build(tmp_path / "runs", [
        "name=photos", "data.format=image_folder", f"data.path={root}", "data.image_size=[16, 20]",
        "data.color=rgb", "data.skip_unreadable=true", "data.normalize={scale: 0.0078125, offset: -1.0}",
        "data.augment={flip_horizontal: true, shift_fraction: 0.1, crop_fraction: 0.1}"])
    assert report["data"]["input_shape"] == [16, 20, 3]
    assert report["data"]["labels"] == ["cat", "dog", "owl"]
    assert report["data"]["skipped_unreadable"] == 1 and report["data"]["skipped_files"] == [str(broken)]
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0
    settings = (tmp_path / "runs" / "photos" / "export" / "photos_model_settings.h").read_text()
    assert "PHOTOS_INPUT_DIMS[PHOTOS_INPUT_DIMS_COUNT] = {1, 16, 20, 3}" in settings
    assert re.search(r"PHOTOS_RAW_SCALE = 0\.0078125f", settings)
    assert re.search(r"PHOTOS_RAW_OFFSET = -1\.0f", settings)
    assert "3 channels in the order R, G, B" in settings and "16x20" in settings
    assert "q = clamp(round((raw * RAW_SCALE + RAW_OFFSET) / INPUT_SCALE) + INPUT_ZERO_POINT, -128, 127)" in settings
    markdown = (tmp_path / "runs" / "photos" / "report.md").read_text()
    assert "1 unreadable files skipped" in markdown and "what the firmware must feed" in markdown


def sensor_build(tmp_path, shape):
    """The smoke recipe on 1,200 separable sensor rows of `shape` (three classes, 3.0 apart in every value), without
    its pruning: 50% in one epoch took the 6-feature MLP from 96% to 49%, which left nothing for QAT to keep."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1200)
    x = rng.normal(size=(1200, *shape)).astype(np.float32) + 3.0 * y.reshape(-1, *[1] * len(shape))
    path = tmp_path / "sensor.npz"
    np.savez(path, x_train=x, y_train=y, labels=np.array(["idle", "walk", "run"]))
    # The smoke recipe's learning rates suit images; at them a 6-feature MLP stayed near chance.
    return smoke_build(tmp_path / "runs", ["name=sensor", "data.format=arrays", f"data.path={path}", "prune=none",
                                           "distill.epochs=12", "teacher.epochs=6", "teacher.learning_rate=0.01",
                                           "distill.learning_rate=0.01", "quantize.learning_rate=0.002",
                                           "quantize.calibrate_ranges=true"])


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    """`sensor(shape)`: the report of `sensor_build` for `shape` and its run folder, built once per module."""
    built = {}

    def get(shape):
        if shape not in built:
            root = tmp_path_factory.mktemp("sensor")
            built[shape] = sensor_build(root, shape), root / "runs" / "sensor"
        return built[shape]
    return get


def stage_accuracy(report, stage):
    """A build stage's test accuracy: the Keras model's (fake-quantized for QAT)."""
    return next(s["test_accuracy"] for s in report["stages"] if s["stage"] == stage)


def stage_int8_accuracy(report, stage):
    """A float build stage's model post-training quantized, in TFLM."""
    return next(s["int8"]["tflm_accuracy"] for s in report["stages"] if s["stage"] == stage)


@pytest.mark.parametrize("shape, first_op", [((6,), "FULLY_CONNECTED"), ((32, 3), "CONV_2D")])
def test_arrays_build_picks_layers_by_rank(sensor, shape, first_op):
    report, folder = sensor(shape)
    assert report["data"]["input_shape"] == list(shape)
    assert first_op in report["int8"]["ops"]
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0
    assert stage_accuracy(report, "distill") > 0.9  # the classes are separable; 0.33 is guessing
    assert report["int8"]["tflm_accuracy"] > 0.85
    saved = json.loads((folder / "report.json").read_text())
    assert saved["data"]["preprocessing"]["raw_scale"] == 1.0


def test_qat_keeps_a_small_models_accuracy(sensor):
    """With quantize.calibrate_ranges QAT starts its activation ranges from the float student's. From TFMOT's
    [-6, 6] its 16 steps left this MLP's ReLUs and logits clipped at 6: int8 72.5% on this build, 63-73% over 3
    seeds with pruning."""
    report, _ = sensor((6,))
    ptq = stage_int8_accuracy(report, "distill")
    assert ptq > 0.9
    assert report["int8"]["tflm_accuracy"] >= ptq - 0.05  # QAT keeps what post-training quantization keeps


def test_example_recipe_documents_the_format(repo):
    text = (repo / "pipelines" / "image_folder_example.yaml").read_text()
    cfg = config.load(repo / "pipelines" / "image_folder_example.yaml")
    assert cfg.data.format == "image_folder" and cfg.data.image_size == (32, 32)
    assert (repo / "datasets" / "shapes" / "images" / "circle").is_dir()
    assert "tinykd build pipelines/image_folder_example.yaml" in text
