"""Your photos: one sub-folder per class (PNG, JPEG, BMP), optionally under `train/`, `val/` and `test/`.

Without those sub-trees the images are split with a seed, each class keeping its share in every split. Every image
is converted to the recipe's colour and resized to `data.image_size` with Pillow's bilinear filter (antialiased
when shrinking): the firmware should scale its camera frames the same way, or train on frames of the device's size.

With `data.stream` the training images stay on disk and are decoded per batch (tinykd.data.streaming): the files
are listed and split exactly as here, then only validation and test are decoded into arrays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tinykd.config import DataConfig
from tinykd.data import streaming
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_stratified, split_train_val
from tinykd.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "val", "test")


def read(cfg: DataConfig, seed: int) -> Dataset:
    """Read every image under `data.path`; pixels stay 0..255 (the data layer normalises)."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder; an image_folder dataset is a folder with one "
                        "sub-folder of images per class (or train/, val/, test/ folders of those)")
    has_splits = (root / "train").is_dir()
    labels = _classes(root / "train" if has_splits else root)
    skipped: list[str] = []
    digest = hashlib.sha256(repr((cfg.image_size, cfg.color, cfg.val_fraction, cfg.test_fraction, seed)).encode())
    pools = {}
    for split in (SPLITS if has_splits else ("all",)):
        folder = root / split if split != "all" else root
        if split != "all" and not folder.is_dir():
            continue
        pools[split] = _list_images(folder, labels, digest)
    height, width = cfg.image_size
    channels = 1 if cfg.color == "grayscale" else 3
    pool = pools["train" if has_splits else "all"]
    fractions = 1.0 if has_splits else 1.0 - cfg.val_fraction - cfg.test_fraction
    stream = streaming.wanted(cfg, int(len(pool) * fractions), height * width * channels * 4)
    if not stream:  # decoded before the split, so unreadable files skipped leave the others' split unchanged
        pools = {name: _decode(files, cfg, skipped) for name, files in pools.items()}
    if has_splits:
        train = pools["train"]
        if "test" not in pools:
            train, pools["test"] = split_train_val(train.x, train.y, cfg.test_fraction, seed)
        if "val" not in pools:
            train, pools["val"] = split_train_val(train.x, train.y, cfg.val_fraction, seed + 1)
        train, val, test = train, pools["val"], pools["test"]
    else:
        train, val, test = split_stratified(pools["all"].x, pools["all"].y, val_fraction=cfg.val_fraction,
                                            test_fraction=cfg.test_fraction, seed=seed)
    if stream:  # the same files in the same order as in memory; val and test are decoded (bounded shares)
        train = Split(x=streaming.StreamedInputs(sources=tuple(str(p) for p in train.x), read=_Reader(cfg),
                                                 raw_shape=(height, width, channels)), y=train.y)
        val, test = _decode(val, cfg, skipped), _decode(test, cfg, skipped)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise DataError(f"data.path: {root}: the {name} split has no images; add images (every class needs "
                            f"at least {int(np.ceil(1 / min(cfg.val_fraction, cfg.test_fraction)))} for a "
                            f"{cfg.val_fraction:.0%}/{cfg.test_fraction:.0%} split) or give {name}/ its own folder")
    channels = "1 channel (luma, Pillow's ITU-R 601-2 conversion)" if cfg.color == "grayscale" else \
        "3 channels in the order R, G, B"
    return Dataset(
        train=train, val=val, test=test, labels=labels,
        preprocessing=Preprocessing(raw_scale=1.0 / 255.0, raw_offset=0.0,
                                    description=f"{cfg.color} pixel 0..255, {height}x{width}, {channels}, "
                                                "row-major HWC; images resized with Pillow bilinear"),
        source=f"image folder {root} ({'train/val/test sub-folders' if has_splits else 'seeded split'}"
               + ("; training images streamed from disk)" if stream else ")"),
        fingerprint=digest.hexdigest()[:16],
        skipped=tuple(skipped),
    )


def _classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"data.path: {folder} has no class folders; put each class's images in a sub-folder "
                        "named after the class (e.g. cat/, dog/)")
    return classes


def _list_images(folder: Path, labels: tuple[str, ...], digest) -> Split:
    """Every image file under `folder`'s class folders, in a stable order, as a Split of paths and labels."""
    found = set(_classes(folder)) if folder.is_dir() else set()
    unknown = found - set(labels)
    if unknown:
        raise DataError(f"{folder}: class folder(s) {', '.join(sorted(unknown))} are not in train/; every split "
                        f"must use the classes {', '.join(labels)}")
    paths, targets = [], []
    for index, label in enumerate(labels):
        if not (folder / label).is_dir():
            continue  # a val/ or test/ tree may lack a class; train/ (where labels come from) never does
        files = sorted(p for p in (folder / label).iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{folder / label}: no images (.png, .jpg, .jpeg, .bmp); add some or remove the folder")
        for path in files:
            digest.update(f"{path.relative_to(folder.parent)}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
            paths.append(str(path))
            targets.append(index)
    return Split(x=np.array(paths, dtype=object), y=np.array(targets, dtype=np.int32))


def _decode(files: Split, cfg: DataConfig, skipped: list) -> Split:
    """The images of a Split of paths as float pixels (N, H, W, C); unreadable ones skipped or raising."""
    from PIL import Image

    images, targets = [], []
    for path, target in zip(files.x, files.y):
        pixels = _load(Path(path), cfg, Image)
        if pixels is None:
            skipped.append(str(path))
            continue
        images.append(pixels)
        targets.append(target)
    height, width = cfg.image_size
    shape = (0, height, width, 1 if cfg.color == "grayscale" else 3)
    x = np.stack(images).astype(np.float32) if images else np.zeros(shape, np.float32)
    return Split(x=x, y=np.array(targets, dtype=np.int32))


class _Reader:
    """One image file as the in-memory path decodes it (a picklable callable for StreamedInputs)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    def __call__(self, path: str) -> np.ndarray:
        from PIL import Image

        return _load(Path(path), self.cfg, Image)


def _load(path: Path, cfg: DataConfig, image_module):
    """One image as HxWxC float pixels, or None when unreadable and `skip_unreadable` is on."""
    try:
        with image_module.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            image = image.convert("L" if cfg.color == "grayscale" else "RGB")
            height, width = cfg.image_size
            image = image.resize((width, height), image_module.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for unreadable and truncated files
        if cfg.skip_unreadable:
            return None
        raise DataError(f"{path}: unreadable image ({error}); replace or delete it, or set "
                        "data.skip_unreadable: true to leave such files out (the report counts them)") from None
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
