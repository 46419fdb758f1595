"""Fashion-MNIST from Debian's IDX files: found, read, split with a seed; broken files give named errors."""

import gzip
import shutil

import numpy as np
import pytest

from tinykd.config import DataConfig
from tinykd.data import fashion_mnist, load, split_train_val
from tinykd.errors import ConfigError, DataError


def test_reads_the_debian_files_whole():
    data = load(DataConfig(), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10
    assert data.train.x.dtype == np.float32 and 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0
    assert data.labels[0] == "T-shirt/top" and data.labels[9] == "Ankle boot"
    # Each class keeps its 10% share in validation (the split is stratified).
    assert np.bincount(data.val.y, minlength=10).tolist() == [600] * 10
    assert data.preprocessing.raw_scale == pytest.approx(1 / 255)


def test_split_is_seeded_and_disjoint():
    x = np.arange(1000, dtype=np.float32)[:, None]
    y = np.repeat(np.arange(10), 100)
    train_a, val_a = split_train_val(x, y, 0.2, seed=3)
    train_b, val_b = split_train_val(x, y, 0.2, seed=3)
    _, val_c = split_train_val(x, y, 0.2, seed=4)
    assert np.array_equal(val_a.x, val_b.x) and np.array_equal(train_a.x, train_b.x)
    assert not np.array_equal(val_a.x, val_c.x)
    assert len(set(train_a.x[:, 0]) & set(val_a.x[:, 0])) == 0
    assert len(train_a) + len(val_a) == 1000


def test_fingerprint_follows_the_split_and_limits():
    base = load(DataConfig(max_train_samples=256, max_test_samples=64), seed=0)
    assert base.fingerprint == load(DataConfig(max_train_samples=256, max_test_samples=64), seed=0).fingerprint
    assert base.fingerprint != load(DataConfig(max_train_samples=256, max_test_samples=64), seed=1).fingerprint
    assert base.fingerprint != load(DataConfig(max_train_samples=512, max_test_samples=64), seed=0).fingerprint
    assert (len(base.train), len(base.test)) == (256, 64)


def copy_dataset(tmp_path):
    for path in fashion_mnist.DEBIAN_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_data_path_is_used_first(tmp_path):
    folder = copy_dataset(tmp_path)
    data = load(DataConfig(path=str(folder), max_train_samples=64, max_test_samples=32), seed=0)
    assert str(folder) in data.source


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as error:
        load(DataConfig(path=str(tmp_path)), seed=0)
    assert f"data.path: {tmp_path}" in str(error.value)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_nothing_found_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fashion_mnist, "KERAS_CACHE_DIR", tmp_path / "keras")
    with pytest.raises(DataError) as error:
        load(DataConfig(download=False), seed=0)
    message = str(error.value)
    assert "Fashion-MNIST not found" in message and "download off" in message
    assert "TINYKD_DATA" in message and "apt-get install dataset-fashion-mnist" in message


def test_truncated_file_is_named(tmp_path):
    folder = copy_dataset(tmp_path)
    images = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: .* bytes where its header promises"):
        load(DataConfig(path=str(folder)), seed=0)
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        load(DataConfig(path=str(folder)), seed=0)


def test_bad_magic_and_mismatched_counts(tmp_path):
    folder = copy_dataset(tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + b"\0" * 8))
    with pytest.raises(DataError, match="not an IDX file"):
        load(DataConfig(path=str(folder)), seed=0)
    labels.write_bytes(gzip.compress(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + bytes(5)))
    with pytest.raises(DataError, match="test has 10000 images but 5 labels"):
        load(DataConfig(path=str(folder)), seed=0)


def test_unknown_format_is_refused_at_load(tmp_path):
    from tinykd import config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {format: csv}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: data.format: must be one of arrays, fashion_mnist, image_folder"):
        config.load(recipe)
