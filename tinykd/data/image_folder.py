"""Your photos: one sub-folder per class (PNG, JPEG, BMP), optionally under `train/`, `val/` and `test/`.

Without those sub-trees the images are split with a seed, each class keeping its share in every split. Every image
is converted to the recipe's colour and resized to `data.image_size` with Pillow's bilinear filter (antialiased
when shrinking): the firmware should scale its camera frames the same way, or train on frames of the device's size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tinykd.config import DataConfig
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
        pools[split] = _read_images(folder, labels, cfg, skipped, digest)
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
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise DataError(f"data.path: {root}: the {name} split has no images; add images (every class needs "
                            f"at least {int(np.ceil(1 / min(cfg.val_fraction, cfg.test_fraction)))} for a "
                            f"{cfg.val_fraction:.0%}/{cfg.test_fraction:.0%} split) or give {name}/ its own folder")
    height, width = cfg.image_size
    channels = "1 channel (luma, Pillow's ITU-R 601-2 conversion)" if cfg.color == "grayscale" else \
        "3 channels in the order R, G, B"
    return Dataset(
        train=train, val=val, test=test, labels=labels,
        preprocessing=Preprocessing(raw_scale=1.0 / 255.0, raw_offset=0.0,
                                    description=f"{cfg.color} pixel 0..255, {height}x{width}, {channels}, "
                                                "row-major HWC; images resized with Pillow bilinear"),
        source=f"image folder {root} ({'train/val/test sub-folders' if has_splits else 'seeded split'})",
        fingerprint=digest.hexdigest()[:16],
        skipped=tuple(skipped),
    )


def _classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"data.path: {folder} has no class folders; put each class's images in a sub-folder "
                        "named after the class (e.g. cat/, dog/)")
    return classes


def _read_images(folder: Path, labels: tuple[str, ...], cfg: DataConfig, skipped: list, digest) -> Split:
    from PIL import Image

    found = set(_classes(folder)) if folder.is_dir() else set()
    unknown = found - set(labels)
    if unknown:
        raise DataError(f"{folder}: class folder(s) {', '.join(sorted(unknown))} are not in train/; every split "
                        f"must use the classes {', '.join(labels)}")
    images, targets = [], []
    for index, label in enumerate(labels):
        if not (folder / label).is_dir():
            continue  # a val/ or test/ tree may lack a class; train/ (where labels come from) never does
        files = sorted(p for p in (folder / label).iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{folder / label}: no images (.png, .jpg, .jpeg, .bmp); add some or remove the folder")
        for path in files:
            digest.update(f"{path.relative_to(folder.parent)}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
            pixels = _load(path, cfg, Image)
            if pixels is None:
                skipped.append(str(path))
                continue
            images.append(pixels)
            targets.append(index)
    height, width = cfg.image_size
    shape = (0, height, width, 1 if cfg.color == "grayscale" else 3)
    x = np.stack(images).astype(np.float32) if images else np.zeros(shape, np.float32)
    return Split(x=x, y=np.array(targets, dtype=np.int32))


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
