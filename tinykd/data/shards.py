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
ROWS = 8192  # rows per shard at most: 8192 logits of 10 classes are 320 KiB
FIRST_ROWS = 1024  # the first shard's rows, before the size of a row is known
SHARD_BYTES = 64 << 20  # the later shards' size when rows are large (hint layers)


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


def write(folder: Path, name: str, rows: int, compute: Callable[[int, int], np.ndarray]) -> Rows | np.ndarray:
    """Compute array `name` of `rows` rows as `compute(start, stop)` per shard and store it; returns it left on disk
    (`Rows`), so only one shard is ever in memory. A shard holds at most `ROWS` rows and, after the first, about
    `SHARD_BYTES` (hint layers can be kilobytes a row where logits are 40 bytes)."""
    files, part, start = [], None, 0
    while start < rows:
        stop = min(rows, start + _shard_rows(part))
        part = np.asarray(compute(start, stop))
        buffer = io.BytesIO()
        np.save(buffer, part, allow_pickle=False)
        file = f"{name}-{len(files):05d}.npy"
        artifacts.write_bytes(folder / file, buffer.getvalue())
        files.append(file)
        start = stop
    if part is None:  # no rows: no shard, but the index still records the shape and dtype `read` gives back
        part = np.asarray(compute(0, 0))
    shape = (rows, *part.shape[1:])
    index = folder / INDEX
    arrays = json.loads(index.read_text())["arrays"] if index.is_file() else {}
    arrays[name] = {"rows": rows, "shape": list(shape), "dtype": str(part.dtype), "shards": files}
    artifacts.write_json(index, {"arrays": arrays, "rows_per_shard": ROWS})
    if not files:
        return np.zeros(shape, part.dtype)
    return Rows([np.load(folder / file, mmap_mode="r") for file in files])


def _shard_rows(previous: np.ndarray | None) -> int:
    """Rows for the next shard: a small first one (the row size is not known yet), then about SHARD_BYTES."""
    if previous is None:
        return min(ROWS, FIRST_ROWS)
    row_bytes = max(1, previous.nbytes // len(previous))
    return max(1, min(ROWS, SHARD_BYTES // row_bytes))
