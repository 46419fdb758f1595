"""Your arrays: one `.npz` with `x_train`, `y_train`, optional `x_val`/`y_val`, `x_test`/`y_test` and `labels`.

Inputs of rank 2 `(N, features)` get dense models, rank 3 `(N, steps, channels)` 1-D convolutions, rank 4
`(N, height, width, channels)` images. Labels are integers 0..K-1; `labels` names the K classes.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from tinykd.config import DataConfig
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_train_val
from tinykd.errors import DataError

PAIRS = (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test"))
RANK_NAMES = {2: "(features,) vector", 3: "(steps, channels) sequence", 4: "(height, width, channels) image"}


def read(cfg: DataConfig, seed: int) -> Dataset:
    """Read and check the arrays; values stay in the file's units (the data layer normalises)."""
    path = Path(cfg.path).expanduser()
    arrays = open_archive(path)
    splits = {}
    for x_key, y_key in PAIRS:
        if (x_key in arrays) != (y_key in arrays):
            present, missing = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise DataError(f"{path}: has {present!r} but not {missing!r}; give both or neither")
        if x_key in arrays:
            splits[x_key[2:]] = _split(path, arrays, x_key, y_key)
    if "train" not in splits:
        raise DataError(f"{path}: missing 'x_train' and 'y_train'; save with np.savez(path, x_train=..., y_train=...)")
    shapes = {name: split.x.shape[1:] for name, split in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: inputs differ in shape between splits ({shapes}); every sample must have one shape")
    labels = _labels(path, arrays, splits)
    train = splits["train"]
    if "test" not in splits:
        train, splits["test"] = split_train_val(train.x, train.y, cfg.test_fraction, seed)
    if "val" not in splits:
        train, splits["val"] = split_train_val(train.x, train.y, cfg.val_fraction, seed + 1)
    for name, split in (("train", train), ("val", splits["val"]), ("test", splits["test"])):
        if len(split) == 0:
            raise DataError(f"{path}: the {name} split is empty; add samples or give x_{name}/y_{name}")
    digest = hashlib.sha256(path.read_bytes())
    digest.update(repr((cfg.val_fraction, cfg.test_fraction, seed)).encode())
    rank = train.x.ndim
    return Dataset(
        train=train, val=splits["val"], test=splits["test"], labels=labels,
        preprocessing=Preprocessing(raw_scale=1.0, raw_offset=0.0,
                                    description=f"the values of x_train as stored in {path.name}, one "
                                                f"{RANK_NAMES[rank]} of shape {tuple(train.x.shape[1:])}, "
                                                "row-major"),
        source=f"arrays in {path}",
        fingerprint=digest.hexdigest()[:16],
    )


def open_archive(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist; save your arrays with np.savez('{path.name}', "
                        "x_train=..., y_train=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single array, not an .npz archive; save with np.savez(path, "
                                "x_train=..., y_train=...)")
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error}); save it with np.savez") from None


def _split(path: Path, arrays: dict, x_key: str, y_key: str) -> Split:
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim not in RANK_NAMES:
        raise DataError(f"{path}: {x_key} has shape {x.shape}; expected (N, features), (N, steps, channels) or "
                        "(N, height, width, channels)")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: {x_key} has dtype {x.dtype}; expected real numbers")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {y_key} must be a 1-D array of integer class indices, got dtype {y.dtype} and "
                        f"shape {y.shape} (one-hot labels: use y.argmax(axis=1))")
    if len(x) != len(y):
        raise DataError(f"{path}: {x_key} has {len(x)} samples but {y_key} has {len(y)}; they must match")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {x_key} contains NaN or infinite values; clean them before training")
    return Split(x=x, y=y.astype(np.int32))


def _labels(path: Path, arrays: dict, splits: dict) -> tuple[str, ...]:
    highest = max(int(split.y.max()) for split in splits.values() if len(split))
    if "labels" in arrays:
        labels = tuple(str(label) for label in np.asarray(arrays["labels"]).reshape(-1))
    else:
        labels = tuple(str(index) for index in range(highest + 1))
    for name, split in splits.items():
        bad = split.y[(split.y < 0) | (split.y >= len(labels))]
        if bad.size:
            raise DataError(f"{path}: y_{name} has label {int(bad[0])}, outside 0..{len(labels) - 1} "
                            f"({'the classes in labels' if 'labels' in arrays else 'inferred from the largest'}); "
                            "labels must be class indices")
    return labels
