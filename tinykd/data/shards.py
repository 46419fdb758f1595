"""Arrays stored as `.npy` shards of at most `ROWS` rows in a folder, with `index.json` naming them.

Teacher outputs for a training split that is streamed from disk are computed shard by shard, so neither the inputs
nor (for large outputs) the outputs need to fit in memory at once; every shard and the index are written atomically,
and the index is rewritten only after a whole array's shards exist, so an interrupted run leaves no array that
looks finished but is not. An interrupted array is recomputed, reusing none of its shards.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from tinykd import artifacts

INDEX = "index.json"
ROWS = 8192  # rows per shard: 8192 logits of 10 classes are 320 KiB


def read(folder: Path) -> dict[str, np.ndarray]:
    """Every finished array in `folder` (memory-mapped shards joined); {} when there is no index yet."""
    index = folder / INDEX
    if not index.is_file():
        return {}
    found = {}
    for name, entry in json.loads(index.read_text())["arrays"].items():
        files = [folder / file for file in entry["shards"]]
        if not all(file.is_file() for file in files):
            continue  # a shard was deleted by hand: recompute that array
        parts = [np.load(file, mmap_mode="r") for file in files]
        found[name] = np.concatenate(parts) if parts else np.zeros(entry["shape"], entry["dtype"])
    return found


class Rows:
    """A stored array left on disk: its memory-mapped shards, read only at the rows asked for."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def __getitem__(self, rows) -> np.ndarray:
        """The rows at the integer index array `rows`, in that order, read from their shards."""
        rows = np.asarray(rows, np.int64)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        found = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for number in np.unique(shard):
            picked = shard == number
            found[picked] = self.parts[number][rows[picked] - self.starts[number]]
        return found

    def __array__(self, dtype=None, copy=None):
        array = np.concatenate(self.parts)
        return array if dtype is None else array.astype(dtype)


def rows(folder: Path) -> dict[str, Rows]:
    """Every finished, non-empty array in `folder` left on disk (see `read`), to read a few rows at a time."""
    index = folder / INDEX
    if not index.is_file():
        return {}
    found = {}
    for name, entry in json.loads(index.read_text())["arrays"].items():
        files = [folder / file for file in entry["shards"]]
        if files and all(file.is_file() for file in files):
            found[name] = Rows([np.load(file, mmap_mode="r") for file in files])
    return found


def write(folder: Path, name: str, rows: int, compute: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Compute array `name` of `rows` rows as `compute(start, stop)` per shard, store it and return it."""
    files, parts = [], []
    for number, start in enumerate(range(0, rows, ROWS)):
        part = np.asarray(compute(start, min(rows, start + ROWS)))
        buffer = io.BytesIO()
        np.save(buffer, part, allow_pickle=False)
        file = f"{name}-{number:05d}.npy"
        artifacts.write_bytes(folder / file, buffer.getvalue())
        files.append(file)
        parts.append(part)
    array = np.concatenate(parts)
    index = folder / INDEX
    arrays = json.loads(index.read_text())["arrays"] if index.is_file() else {}
    arrays[name] = {"rows": rows, "shape": list(array.shape), "dtype": str(array.dtype), "shards": files}
    artifacts.write_json(index, {"arrays": arrays, "rows_per_shard": ROWS})
    return array
