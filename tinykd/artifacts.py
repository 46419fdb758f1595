"""Atomic files and the stage records that let an interrupted build resume.

A stage is done when its `stage.json` exists and holds the key of its inputs. The record is written last, after
every artifact was renamed into place, so a build killed mid-stage has no record and redoes that stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

RECORD = "stage.json"


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file 0600; results are for others too (a CI artifact collector, a web server, a colleague),
# so every file gets the mode a plain open() would give it: 0644 under the usual umask 022.
FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def save_figure(figure, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically (a temporary name, then a rename) and close it."""
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=120)
    pyplot.close(figure)
    temporary.replace(path)
    return path


def save_model(model, path: Path) -> Path:
    """Save a Keras model atomically (Keras writes to a temporary name first, then it is renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        with warnings.catch_warnings():
            # HDF5 is chosen on purpose for QAT models (see quantize): Keras' .keras format loses their quantizers.
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
            model.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True) if temporary.is_dir() else temporary.unlink(missing_ok=True)
        raise
    return path


def copy_file(source: Path, path: Path) -> Path:
    """Copy atomically (temporary file + rename)."""
    return write_bytes(path, source.read_bytes())


def key(*parts) -> str:
    """A short, stable hash of JSON-able parts: the identity of a stage's inputs.

    The tinykd code is not part of it: after upgrading tinykd, rebuild with --force (docs/pipeline.md).
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Done(Generic[T]):
    """What a finished (or reused) stage hands on: its value and its record."""

    value: T
    record: dict

    @property
    def run_id(self) -> str:
        """Changes on every redo of the stage; stages after it put it in their keys."""
        return self.record["run_id"]


class Run:
    """The folder `runs/<name>/`: one sub-folder per stage, each with its artifacts and its record.

    `log` receives one line per stage (reused or done), `verbose` is Keras' progress level for training stages;
    `records` collects every stage's record for the report.
    """

    def __init__(self, root: Path, force: tuple[str, ...] = (), log: Callable[[str], None] = lambda message: None,
                 verbose: int = 0):
        self.root = root
        self.force = set(force)
        self.log = log
        self.verbose = verbose
        self.records: dict[str, dict] = {}

    def step(self, name: str, stage_key: str, compute: Callable[[], tuple[T, dict]],
             save: Callable[[Path, T], None] | None = None, load: Callable[[Path], T] | None = None,
             artifact: str | None = None) -> Done[T]:
        """Run one stage, or reuse it when its record holds `stage_key` (and its `artifact` file exists).

        Args:
            compute: () -> (value, metrics); runs only when the stage is not reused.
            save: (folder, value) -> None, writes the artifacts atomically before the record is written.
            load: folder -> value, read back from the artifacts, whether just computed or reused, so a rebuild
                hands on exactly what a first build does; without it a reused stage's value is None.
        """
        folder = self.root / name
        record = self.cached(name, stage_key)
        if record is not None and artifact is not None and not (folder / artifact).exists():
            record = None
        if record is not None:
            self.log(f"[{name}] unchanged, reusing {folder} (--force {name} to redo)")
            value = load(folder) if load is not None else None
        else:
            self.start(name)
            started = time.time()
            value, metrics = compute()
            if save is not None:
                save(folder, value)
            record = self.finish(name, stage_key, metrics, started)
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in metrics.items() if not isinstance(v, (dict, list, tuple)))
            self.log(f"[{name}] done in {record['seconds']:.1f} s" + (f": {shown}" if shown else ""))
            if load is not None:
                value = load(folder)
        self.records[name] = record
        return Done(value, record)

    def dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, stage: str) -> Path:
        """The stage's folder, cleared of temporary files a killed build left behind (they never count as done)."""
        folder = self.dir(stage)
        for leftover in folder.glob(".*.tmp*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return folder

    def cached(self, stage: str, stage_key: str) -> dict | None:
        """The stage's record if it finished with these inputs and is not forced, else None."""
        if stage in self.force:
            return None
        path = self.root / stage / RECORD
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("key") == stage_key else None

    def finish(self, stage: str, stage_key: str, metrics: dict, started: float) -> dict:
        """Record the stage as done; `run_id` changes on every redo, so stages downstream redo too."""
        record = {"key": stage_key, "run_id": uuid.uuid4().hex, "seconds": round(time.time() - started, 2),
                  "metrics": metrics}
        write_json(self.dir(stage) / RECORD, record)
        return record
