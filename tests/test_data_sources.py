"""Bring your own data: image folders and .npz arrays, read, split and checked; every bad input is named."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinykd.config import AugmentConfig, DataConfig, NormalizeConfig
from tinykd.data import load
from tinykd.errors import ConfigError, DataError


def make_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class=20, seed=0) -> Path:
    """Class folders of PNG, JPEG and BMP images in mixed sizes and modes, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    for index, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            height, width = (int(v) for v in rng.integers(8, 48, size=2))
            pixels = np.full((height, width, 3), 40 * index, dtype=np.uint8) + rng.integers(0, 30, (height, width, 3),
                                                                                             dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
            suffix = (".png", ".jpg", ".bmp")[number % 3]
            (image.convert("L") if number % 4 == 0 else image).save(root / label / f"{label}{number}{suffix}")
    return root


def image_cfg(root, **changes):
    return DataConfig(**({"format": "image_folder", "path": str(root), "image_size": (12, 16), "color": "rgb"}
                         | changes))


def test_image_folder_resizes_mixed_sizes_and_splits_by_class(tmp_path):
    data = load(image_cfg(make_image_folder(tmp_path)), seed=0)
    assert data.input_shape == (12, 16, 3) and data.labels == ("cat", "dog", "owl")
    assert (len(data.train), len(data.val), len(data.test)) == (48, 6, 6)
    for split in (data.train, data.val, data.test):
        assert np.bincount(split.y, minlength=3).min() >= 1  # stratified: every class in every split
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0  # default normalisation: pixel / 255
    assert "3 channels in the order R, G, B" in data.preprocessing.description


def test_grayscale_and_normalisation_from_the_recipe(tmp_path):
    cfg = image_cfg(make_image_folder(tmp_path), color="grayscale",
                    normalize=NormalizeConfig(scale=1 / 127.5, offset=-1.0))
    data = load(cfg, seed=0)
    assert data.input_shape == (12, 16, 1)
    assert -1.0 <= data.train.x.min() and data.train.x.max() <= 1.0 and data.train.x.min() < 0
    assert data.preprocessing.raw_offset == -1.0 and data.preprocessing.raw_scale == pytest.approx(1 / 127.5)


def test_train_val_test_subtrees_are_used_as_given(tmp_path):
    for split, count in (("train", 10), ("val", 3), ("test", 4)):
        make_image_folder(tmp_path / split, classes=("a", "b"), per_class=count, seed=len(split))
    data = load(image_cfg(tmp_path), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 6, 8)
    assert "train/val/test sub-folders" in data.source


def test_only_train_subtree_splits_the_rest_off(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=20)
    data = load(image_cfg(tmp_path), seed=0)
    assert len(data.train) + len(data.val) + len(data.test) == 40 and len(data.val) > 0 and len(data.test) > 0


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path):
    root = make_image_folder(tmp_path)
    broken = root / "dog" / "dog3.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated PNG
    with pytest.raises(DataError) as error:
        load(image_cfg(root), seed=0)
    assert str(error.value).startswith(f"{broken}: unreadable image")
    assert "data.skip_unreadable: true" in str(error.value)
    (root / "owl" / "notes.jpg").write_text("not an image")
    data = load(image_cfg(root, skip_unreadable=True), seed=0)
    assert sorted(data.skipped) == sorted([str(broken), str(root / "owl" / "notes.jpg")])
    assert len(data.train) + len(data.val) + len(data.test) == 59


def test_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"empty_class: no images \(\.png, \.jpg, \.jpeg, \.bmp\)"):
        load(image_cfg(root), seed=0)


def test_too_few_images_for_a_split(tmp_path):
    root = make_image_folder(tmp_path, classes=("a", "b"), per_class=2)
    with pytest.raises(DataError, match="the val split has no images"):
        load(image_cfg(root), seed=0)


def test_folder_without_classes_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="has no class folders"):
        load(image_cfg(tmp_path), seed=0)
    with pytest.raises(DataError, match="is not a folder"):
        load(image_cfg(tmp_path / "nope"), seed=0)


def test_val_class_not_in_train(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=10)
    make_image_folder(tmp_path / "val", classes=("a", "c"), per_class=3)
    with pytest.raises(DataError, match=r"class folder\(s\) c are not in train/"):
        load(image_cfg(tmp_path), seed=0)


def test_augmenting_non_images_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((100, 5), np.float32), y_train=np.arange(100) % 2)
    with pytest.raises(ConfigError, match="data.augment: flips, shifts and crops need images"):
        load(DataConfig(format="arrays", path=str(path), augment=AugmentConfig(flip_horizontal=True)), seed=0)


@pytest.mark.parametrize("shape", [(200, 6), (200, 20, 3), (200, 8, 8, 1)])
def test_arrays_of_each_rank(tmp_path, shape):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.normal(size=shape).astype(np.float32), y_train=rng.integers(0, 3, 200),
             x_test=rng.normal(size=(30, *shape[1:])), y_test=rng.integers(0, 3, 30),
             labels=np.array(["idle", "walk", "run"]))
    data = load(DataConfig(format="arrays", path=str(path)), seed=0)
    assert data.input_shape == shape[1:] and data.labels == ("idle", "walk", "run")
    assert len(data.test) == 30 and len(data.train) + len(data.val) == 200
    assert data.preprocessing.raw_scale == 1.0


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((10, 4))}, "has 'x_train' but not 'y_train'"),
    ({"x_val": np.zeros((10, 4)), "y_val": np.zeros(10, int)}, "missing 'x_train' and 'y_train'"),
    ({"x_train": np.zeros((10, 4)), "y_train": np.zeros(9, int)}, "x_train has 10 samples but y_train has 9"),
    ({"x_train": np.zeros((10, 4)), "y_train": np.zeros(10)}, "y_train must be a 1-D array of integer"),
    ({"x_train": np.zeros((10, 4)), "y_train": np.array([0] * 9 + [-1])}, "y_train has label -1, outside"),
    ({"x_train": np.zeros((10, 4)), "y_train": np.array([0] * 9 + [5]), "labels": np.array(["a", "b"])},
     "y_train has label 5, outside 0..1"),
    ({"x_train": np.zeros(10), "y_train": np.zeros(10, int)}, "x_train has shape (10,)"),
    ({"x_train": np.full((10, 4), np.nan), "y_train": np.zeros(10, int)}, "x_train contains NaN"),
    ({"x_train": np.zeros((10, 4)), "y_train": np.zeros(10, int), "x_test": np.zeros((3, 5)),
      "y_test": np.zeros(3, int)}, "inputs differ in shape between splits"),
])
def test_bad_npz_names_the_key(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as error:
        load(DataConfig(format="arrays", path=str(path)), seed=0)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_missing_or_broken_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(DataConfig(format="arrays", path=str(tmp_path / "none.npz")), seed=0)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz file"):
        load(DataConfig(format="arrays", path=str(tmp_path / "broken.npz")), seed=0)


def test_empty_split_in_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((3, 4)), y_train=np.array([0, 1, 0]))
    with pytest.raises(DataError, match="split is empty"):
        load(DataConfig(format="arrays", path=str(path)), seed=0)
