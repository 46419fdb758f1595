"""The data layer: every source becomes the same `Dataset`, so the rest of the pipeline never asks where data came from.

A reader (`READERS[data.format]`) returns the splits in raw units (0-255 pixels, sensor values) with its default
preprocessing; `load` then applies the recipe's normalisation and sample limits, in one place for every source, so
`model_settings.h` can state exactly what the firmware must feed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from tinykd.config import DataConfig
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_stratified, split_train_val
from tinykd.errors import ConfigError

__all__ = ["Dataset", "Preprocessing", "Split", "load", "split_stratified", "split_train_val", "READERS"]


def _fashion_mnist(cfg, seed, search_dirs):
    from tinykd.data import fashion_mnist

    return fashion_mnist.read(cfg, seed, search_dirs)


def _image_folder(cfg, seed, search_dirs):
    from tinykd.data import image_folder

    return image_folder.read(cfg, seed)


def _arrays(cfg, seed, search_dirs):
    from tinykd.data import arrays

    return arrays.read(cfg, seed)


READERS = {"fashion_mnist": _fashion_mnist, "image_folder": _image_folder, "arrays": _arrays}


def load(cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...] = ()) -> Dataset:
    """Read the dataset a recipe names, normalised and cut to the recipe's sample limits.

    Args:
        cfg: the recipe's `data:` section.
        seed: seeds every split the reader makes.
        search_dirs: extra folders to look in (the CLI passes `$TINYKD_DATA`).

    Raises:
        DataError: the data is missing or inconsistent; the message names the file or key and the fix.
        ConfigError: the recipe asks for something this data cannot do (augmenting non-images).
    """
    if cfg.format not in READERS:
        raise ConfigError(f"data.format: unknown format {cfg.format!r}; known: {', '.join(sorted(READERS))}")
    raw = READERS[cfg.format](cfg, seed, search_dirs)
    if cfg.augment is not None and cfg.augment.active and len(raw.input_shape) != 3:
        raise ConfigError(f"data.augment: flips, shifts and crops need images (height, width, channels), but "
                          f"{raw.source} gives inputs of shape {raw.input_shape}; remove data.augment")
    preprocessing = raw.preprocessing
    if cfg.normalize is not None:
        preprocessing = replace(preprocessing, raw_scale=cfg.normalize.scale, raw_offset=cfg.normalize.offset)
    val_count = None if cfg.max_train_samples is None else max(32, int(cfg.max_train_samples * cfg.val_fraction))
    limits = {"seed": seed, "train": cfg.max_train_samples, "test": cfg.max_test_samples,
              "scale": preprocessing.raw_scale, "offset": preprocessing.raw_offset}
    fingerprint = hashlib.sha256((raw.fingerprint + json.dumps(limits, sort_keys=True)).encode()).hexdigest()[:16]

    def normalised(split: Split, count: int | None) -> Split:
        split = split.head(count)
        return Split(x=split.x * preprocessing.raw_scale + preprocessing.raw_offset, y=split.y)

    return replace(raw, train=normalised(raw.train, cfg.max_train_samples), val=normalised(raw.val, val_count),
                   test=normalised(raw.test, cfg.max_test_samples), preprocessing=preprocessing,
                   fingerprint=fingerprint)
