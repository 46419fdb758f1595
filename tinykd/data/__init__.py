"""The data layer: every source becomes the same `Dataset`, so the rest of the pipeline never asks where data came from.

A source is a function `read(cfg, seed, search_dirs) -> Dataset` registered in `READERS` under the recipe's
`data.format`. Arrays are float32 model inputs (already normalised) and integer labels; `preprocessing` says how the
firmware turns raw sensor values into those inputs, so `model_settings.h` can state it.
"""

from __future__ import annotations

from pathlib import Path

from tinykd.config import DataConfig
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_train_val
from tinykd.errors import ConfigError

__all__ = ["Dataset", "Preprocessing", "Split", "load", "split_train_val", "READERS"]


def _fashion_mnist(cfg, seed, search_dirs):
    from tinykd.data import fashion_mnist

    return fashion_mnist.read(cfg, seed, search_dirs)


READERS = {"fashion_mnist": _fashion_mnist}


def load(cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...] = ()) -> Dataset:
    """Read the dataset a recipe names.

    Args:
        cfg: the recipe's `data:` section.
        seed: seeds the validation split.
        search_dirs: extra folders to look in (the CLI passes `$TINYKD_DATA`).

    Raises:
        DataError: the data is missing or inconsistent; the message says how to get or fix it.
    """
    if cfg.format not in READERS:
        raise ConfigError(f"data.format: unknown format {cfg.format!r}; known: {', '.join(sorted(READERS))}")
    return READERS[cfg.format](cfg, seed, search_dirs)
