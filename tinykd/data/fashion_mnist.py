"""Fashion-MNIST from its IDX files (Debian's `dataset-fashion-mnist`, Keras' cache, or a folder you name)."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
from pathlib import Path

import numpy as np

from tinykd.config import DataConfig
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_train_val
from tinykd.errors import DataError

LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
DOWNLOAD_TIMEOUT_SECONDS = 10
HOW_TO_GET = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
    f"{DEBIAN_DIR}), or put the four files {', '.join(n + '.gz' for n in FILES.values())} in a folder and "
    "set `data.path` in the recipe or the environment variable TINYKD_DATA to it."
)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


def read(cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...] = ()) -> Dataset:
    """Find the IDX files, read them and split validation from train; pixels stay 0..255 (load normalises)."""
    folder = find(cfg, search_dirs)
    digest = hashlib.sha256()
    arrays = {}
    for key, stem in FILES.items():
        path = _existing(folder, stem)
        raw = path.read_bytes()
        digest.update(raw)
        arrays[key] = read_idx(raw, path)
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise DataError(f"{folder}: {part} has {len(arrays[f'{part}_images'])} images but "
                            f"{len(arrays[f'{part}_labels'])} labels; the files are from different releases")
    train, val = split_train_val(_pixels(arrays["train_images"]), arrays["train_labels"].astype(np.int32),
                                 cfg.val_fraction, seed)
    digest.update(f"val_fraction={cfg.val_fraction};seed={seed}".encode())
    return Dataset(
        train=train,
        val=val,
        test=Split(x=_pixels(arrays["test_images"]), y=arrays["test_labels"].astype(np.int32)),
        labels=LABELS,
        preprocessing=Preprocessing(raw_scale=1.0 / 255.0, raw_offset=0.0,
                                    description="grayscale pixel 0..255 (0 = background), 28x28, row-major"),
        source=f"Fashion-MNIST IDX files in {folder}",
        fingerprint=digest.hexdigest()[:16],
    )


def find(cfg: DataConfig, search_dirs: tuple[Path, ...] = ()) -> Path:
    """The first folder that holds all four files: data.path, search_dirs, Debian's, Keras' cache, a download."""
    if cfg.path:  # a folder the user named must hold the data; falling back elsewhere would hide the mistake
        folder = Path(cfg.path).expanduser()
        if not all(_existing(folder, stem, required=False) for stem in FILES.values()):
            raise DataError(f"data.path: {cfg.path} does not hold the Fashion-MNIST files "
                            f"({', '.join(FILES.values())}, optionally .gz); put them there, or remove data.path "
                            f"to use the installed dataset (`sudo apt-get install dataset-fashion-mnist` puts it in "
                            f"{DEBIAN_DIR})")
        return folder
    candidates = [Path(d) for d in search_dirs] + [DEBIAN_DIR, KERAS_CACHE_DIR]
    for folder in candidates:
        if all(_existing(folder, stem, required=False) for stem in FILES.values()):
            return folder
    if cfg.download:
        _download_with_keras()
        if all(_existing(KERAS_CACHE_DIR, stem, required=False) for stem in FILES.values()):
            return KERAS_CACHE_DIR
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"Fashion-MNIST not found (looked in {looked}; download "
                    f"{'failed' if cfg.download else 'off'}). {HOW_TO_GET}")


def files(cfg: DataConfig, search_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """The four IDX files `read` reads (for a build's manifest)."""
    folder = find(cfg, search_dirs)
    return [_existing(folder, stem) for stem in FILES.values()]


def read_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode one IDX file (gzipped or not): magic, dimensions, then the values."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: truncated or corrupt gzip ({error}); fetch the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); expected the Fashion-MNIST IDX files")
    dtype, rank = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * rank
    shape = struct.unpack(f">{rank}I", raw[4:header]) if len(raw) >= header else ()
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected or not shape:
        raise DataError(f"{path}: {len(raw)} bytes where its header promises {expected}; the file is truncated, "
                        "fetch it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _pixels(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32)[..., np.newaxis]


def _existing(folder: Path, stem: str, required: bool = True) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    if required:
        raise DataError(f"{folder}: {stem}(.gz) is missing. {HOW_TO_GET}")
    return None


def _download_with_keras() -> None:
    """Keras' own downloader, bounded by a socket timeout so an offline machine fails fast."""
    from tinykd.keras_shim import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        keras.datasets.fashion_mnist.load_data()
    except Exception:  # noqa: BLE001 - any download failure means "not available"; the caller explains how to get it
        return
    finally:
        socket.setdefaulttimeout(previous)
