"""data.stream: training inputs read from disk through tf.data are the in-memory ones, for the same files in the
same splits and order; teacher logits are stored in shards and a second student build never runs the teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SMOKE_RECIPE
from test_data_sources import image_cfg, make_image_folder
from test_speech_commands import RATE, clip_name, sc_cfg, write_wav
from tinykd import config
from tinykd.audio import FrontendConfig
from tinykd.data import load, shards, streaming
from tinykd.distill import Schedule, _dataset, teacher_features, teacher_logits
from tinykd.errors import ConfigError
from tinykd.keras_shim import keras
from tinykd.pipeline import BuildOptions, build


def both(cfg, **kwargs):
    """The data set read into memory and streamed, from one config."""
    from dataclasses import replace

    return (load(replace(cfg, stream="never"), seed=3, **kwargs), load(replace(cfg, stream="always"), seed=3, **kwargs))


@pytest.mark.parametrize("changes", [{}, {"color": "grayscale", "normalize": config.NormalizeConfig(scale=0.5,
                                                                                                     offset=-3.0)}])
def test_streamed_images_are_the_in_memory_ones(tmp_path, changes):
    memory, streamed = both(image_cfg(make_image_folder(tmp_path, per_class=12), **changes))
    assert streaming.is_streamed(streamed.train.x) and not streaming.is_streamed(memory.train.x)
    assert streamed.fingerprint == memory.fingerprint and streamed.input_shape == memory.input_shape
    np.testing.assert_array_equal(streamed.train.y, memory.train.y)  # the same files, split and ordered the same
    np.testing.assert_array_equal(np.asarray(streamed.train.x), memory.train.x)  # bit for bit
    picks = np.array([5, 0, 17])
    np.testing.assert_array_equal(streamed.train.x[picks], memory.train.x[picks])  # convert's calibration rows
    for name in ("val", "test"):
        np.testing.assert_array_equal(getattr(streamed, name).x, getattr(memory, name).x)
        np.testing.assert_array_equal(getattr(streamed, name).y, getattr(memory, name).y)
    assert "streamed from disk" in streamed.source and "streamed from disk" not in memory.source


def test_streamed_images_with_their_own_split_folders(tmp_path):
    make_image_folder(tmp_path / "train", per_class=10)
    make_image_folder(tmp_path / "test", per_class=3, seed=1)
    memory, streamed = both(image_cfg(tmp_path))
    np.testing.assert_array_equal(streamed.train.y, memory.train.y)
    np.testing.assert_array_equal(np.asarray(streamed.train.x), memory.train.x)
    np.testing.assert_array_equal(streamed.val.x, memory.val.x)


def test_streamed_batches_are_the_in_memory_batches_in_the_same_shuffled_order(tmp_path):
    memory, streamed = both(image_cfg(make_image_folder(tmp_path, per_class=12), normalize=None))
    schedule = Schedule(epochs=1, batch_size=8, learning_rate=1e-3, seed=5)
    logits = np.random.default_rng(0).normal(size=(len(memory.train), 3)).astype(np.float32)
    for training in (False, True):
        expected = list(_dataset(memory.train, logits, schedule, training).as_numpy_iterator())
        got = list(_dataset(streamed.train, logits, schedule, training).as_numpy_iterator())
        assert len(got) == len(expected) == -(-len(memory.train) // 8)
        for (x, (y, z)), (x_memory, (y_memory, z_memory)) in zip(got, expected):
            np.testing.assert_array_equal(x, x_memory)
            np.testing.assert_array_equal(y, y_memory)
            np.testing.assert_array_equal(z, z_memory)


def test_streamed_augmentation_runs_in_the_pipeline(tmp_path):
    memory, streamed = both(image_cfg(make_image_folder(tmp_path, per_class=12)))
    augment = config.AugmentConfig(flip_horizontal=True, shift_fraction=0.2)
    schedule = Schedule(epochs=1, batch_size=8, learning_rate=1e-3, seed=5, augment=augment)
    x, _ = next(iter(_dataset(streamed.train, None, schedule, training=True).as_numpy_iterator()))
    x_memory, _ = next(iter(_dataset(memory.train, None, schedule, training=True).as_numpy_iterator()))
    assert x.shape == x_memory.shape == (8, 12, 16, 3)
    assert 0.0 <= x.min() and x.max() <= 1.0


def make_clips(root):
    """A few noisy clips per word (so the front-end's features vary), the list files and background noise."""
    rng = np.random.default_rng(1)
    for speaker in range(6):
        for word in ("yes", "no", "cat"):
            write_wav(root / clip_name(speaker, word), rng.integers(-4000, 4000, RATE))
    (root / "validation_list.txt").write_text("".join(clip_name(0, w) + "\n" for w in ("yes", "no", "cat")))
    (root / "testing_list.txt").write_text("".join(clip_name(1, w) + "\n" for w in ("yes", "no", "cat")))
    write_wav(root / "_background_noise_" / "hiss.wav", rng.integers(-3000, 3000, 3 * RATE))
    (root / "no" / "empty_nohash_0.wav").write_bytes(b"")  # left out and listed either way
    return root


def test_streamed_clips_through_the_frontend_are_the_in_memory_features(tmp_path):
    cfg = sc_cfg(make_clips(tmp_path / "sc"), keywords=("yes", "no"), unknown_fraction=0.5, silence_fraction=0.5)
    memory, streamed = both(cfg, frontend=FrontendConfig())
    assert streaming.is_streamed(streamed.train.x)
    assert streamed.input_shape == memory.input_shape == (49, 40, 1)
    np.testing.assert_array_equal(streamed.train.y, memory.train.y)
    assert (memory.train.y == 0).any()  # silence cuts are streamed too
    np.testing.assert_array_equal(np.asarray(streamed.train.x), memory.train.x)
    np.testing.assert_array_equal(streamed.test_audio, memory.test_audio)
    assert streamed.skipped == memory.skipped and len(memory.skipped) == 1


def test_stored_teacher_layers_of_a_streamed_split_are_the_in_memory_ones_in_the_same_order(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS", 10)  # several shards, read back per batch from disk
    memory, streamed = both(image_cfg(make_image_folder(tmp_path, per_class=12), normalize=None))
    model = keras.Sequential([keras.Input((12, 16, 3)), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    # Computed from the streamed split shard by shard, as the teacher stage does, and read back from the shards.
    shards.write(tmp_path / "features", "train", len(streamed.train),
                 lambda start, stop: teacher_features(model, "conv", "key", streamed.train.x[start:stop]))
    stored = shards.rows(tmp_path / "features")["train"]
    assert len(stored.parts) > 1
    np.testing.assert_allclose(stored, teacher_features(model, "conv", "key", memory.train.x), rtol=1e-6, atol=1e-6)
    schedule = Schedule(epochs=1, batch_size=8, learning_rate=1e-3, seed=5)
    expected = list(_dataset(memory.train, None, schedule, True, features=(stored,)).as_numpy_iterator())
    got = list(_dataset(streamed.train, None, schedule, True, features=(stored,)).as_numpy_iterator())
    assert len(got) == len(expected) == -(-len(memory.train) // 8)
    for (x, targets), (x_memory, targets_memory) in zip(got, expected):
        np.testing.assert_array_equal(x, x_memory)
        np.testing.assert_array_equal(targets["labels"], targets_memory["labels"])
        np.testing.assert_array_equal(targets["features"][0], targets_memory["features"][0])
        assert "logits" not in targets
    x, targets = expected[0]  # each input's own stored row goes with it through the shuffle
    np.testing.assert_allclose(targets["features"][0], model.get_layer("conv")(x).numpy(), rtol=1e-5, atol=1e-5)


def test_auto_streams_only_past_the_threshold(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path, per_class=12)
    assert not streaming.is_streamed(load(image_cfg(root), seed=0).train.x)  # auto, and far below 1 GiB
    monkeypatch.setattr(streaming, "THRESHOLD_BYTES", 1000)
    assert streaming.is_streamed(load(image_cfg(root), seed=0).train.x)
    assert not streaming.is_streamed(load(image_cfg(root, stream="never"), seed=0).train.x)
    # skip_unreadable needs every image decoded before the split: auto then reads into memory
    assert not streaming.is_streamed(load(image_cfg(root, skip_unreadable=True), seed=0).train.x)


@pytest.mark.parametrize("setting, message", [
    ("data.stream=maybe", "must be true, false or auto"),
    ("data.stream=true", "true works for image_folder and speech_commands"),
])
def test_stream_key_is_checked_at_load(setting, message):
    with pytest.raises(ConfigError, match="data.stream") as error:
        config.load(SMOKE_RECIPE, config.parse_overrides([setting]))
    assert message in str(error.value)


def test_stream_always_refuses_skip_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="skip_unreadable"):
        config.load(SMOKE_RECIPE, config.parse_overrides([
            "data.format=image_folder", f"data.path={tmp_path}", "data.image_size=[8, 8]",
            "data.skip_unreadable=true", "data.stream=true"]))


def test_shards_round_trip_and_an_unfinished_array_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS", 4)
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    stored = shards.write(tmp_path, "train", 10, lambda start, stop: values[start:stop])
    np.testing.assert_array_equal(stored, values)
    index = json.loads((tmp_path / shards.INDEX).read_text())
    assert index["arrays"]["train"]["shards"] == ["train-00000.npy", "train-00001.npy", "train-00002.npy"]
    np.testing.assert_array_equal(shards.read(tmp_path)["train"], values)
    on_disk = shards.rows(tmp_path)["train"]  # left memory-mapped, read at the rows asked for, across shards
    assert len(on_disk) == 10 and on_disk.shape == (10, 3)
    np.testing.assert_array_equal(on_disk[[9, 0, 5, 4, 3]], values[[9, 0, 5, 4, 3]])
    np.testing.assert_array_equal(np.asarray(on_disk), values)
    with pytest.raises(ZeroDivisionError):  # interrupted after one shard: no index entry, so nothing looks finished
        shards.write(tmp_path, "val", 10, lambda start, stop: values[start:stop] if start == 0 else 1 / 0)
    assert set(shards.read(tmp_path)) == set(shards.rows(tmp_path)) == {"train"}


def test_large_rows_go_to_smaller_shards_and_the_array_stays_on_disk(tmp_path, monkeypatch):
    """Rows of 4 KiB (a hint layer's, not a logit's) with 16 KiB shards: the first shard has FIRST_ROWS rows, the
    later ones 4; what write returns is read from the memory-mapped shards, and rows come back across them."""
    monkeypatch.setattr(shards, "FIRST_ROWS", 3)
    monkeypatch.setattr(shards, "SHARD_BYTES", 16 << 10)
    values = np.random.default_rng(0).normal(size=(13, 32, 32)).astype(np.float32)
    asked = []
    stored = shards.write(tmp_path, "train", 13, lambda start, stop: asked.append((start, stop)) or values[start:stop])
    assert asked == [(0, 3), (3, 7), (7, 11), (11, 13)]
    assert isinstance(stored, shards.Rows) and all(isinstance(part, np.memmap) for part in stored.parts)
    np.testing.assert_array_equal(stored[[12, 0, 3, 6, 7]], values[[12, 0, 3, 6, 7]])
    np.testing.assert_array_equal(shards.read(tmp_path)["train"], values)


def test_streamed_teacher_logits_are_the_in_memory_ones(tmp_path):
    memory, streamed = both(image_cfg(make_image_folder(tmp_path, per_class=12)))
    model = keras.Sequential([keras.Input((12, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    np.testing.assert_allclose(teacher_logits(model, streamed.train.x), teacher_logits(model, memory.train.x),
                               rtol=1e-6, atol=1e-6)


@pytest.fixture
def predictions(monkeypatch):
    """The names of the models whose `predict` runs (a spy: the real predict still runs)."""
    names = []
    original = keras.Model.predict

    def spy(self, *args, **kwargs):
        names.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "predict", spy)
    return names


def test_a_second_student_on_streamed_data_never_runs_the_teacher(tmp_path, predictions):
    root = make_image_folder(tmp_path / "images", per_class=24)
    runs = tmp_path / "runs"

    def student(name, *more):
        overrides = config.parse_overrides([
            f"name={name}", "data.format=image_folder", f"data.path={root}", "data.image_size=[12, 12]",
            "data.stream=always", "data.max_train_samples=null", "data.max_test_samples=null", *more])
        return build(config.load(SMOKE_RECIPE, overrides), runs, BuildOptions()).report

    first = student("first")
    assert first["data"]["source"].endswith("training images streamed from disk)")
    assert predictions.count("teacher") >= 2  # the teacher's logits on train and val, computed once
    index = json.loads(next((runs / ".teacher_cache").glob("teacher-*.logits")).joinpath(shards.INDEX).read_text())
    assert index["arrays"]["train"]["rows"] == first["data"]["train"]
    predictions.clear()
    second = student("second", "distill.temperature=2", "seed=1")  # distill, prune and QAT again, same teacher
    assert "teacher" not in predictions and second["int8"]["tflite_bytes"] > 0
