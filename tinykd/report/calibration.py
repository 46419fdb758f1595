"""Latency measurements from CSV files: the published ones the fit stands on, and the user's own.

Model paths in a CSV are resolved next to it or in its parent folder (mcu_calibration.csv names
models/mlperf_tiny/... relative to the shared folder above it).
"""

from __future__ import annotations

import csv
from pathlib import Path

from tinykd.errors import ConfigError
from tinykd.report import graph as graph_module
from tinykd.report.latency import Measurement, model_features


def load_calibration(path: Path) -> tuple[Measurement, ...]:
    """Published measurements in the format of mcu_calibration.csv (model files relative to its parent folder).

    Raises:
        ConfigError: a column is missing or a value is not a number.
    """
    measurements = []
    for row in _csv_rows(path, ("model_file", "model", "core", "clock_mhz", "stack", "latency_ms", "macs")):
        stack = row["stack"]
        model_path = _model_path(path, row["model_file"]) if row["model_file"] else None
        graph = graph_module.read(model_path.read_bytes(), str(model_path)) if model_path else None
        measurements.append(Measurement(
            name=row.get("id") or row["model"], core=row["core"], clock_mhz=_number(path, row, "clock_mhz"),
            latency_ms=_number(path, row, "latency_ms"), macs=int(_number(path, row, "macs")),
            kernels="reference" if "reference kernels" in stack else "cmsis-nn",
            release="old" if "TFLM 2." in stack else "current",
            features=model_features(graph) if graph else None, board=row.get("board", "")))
    return tuple(measurements)


def load_measurements(path: Path, boards: dict) -> tuple[Measurement, ...]:
    """The user's own latencies: columns `model` (a .tflite path, relative to the CSV), `board`, `latency_ms`.

    Raises:
        ConfigError: a column, board or model file is missing, or a latency is not a positive number.
    """
    measurements = []
    for number, row in enumerate(_csv_rows(path, ("model", "board", "latency_ms")), start=2):
        if row["board"] not in boards:
            raise ConfigError(f"{path}: line {number}: unknown board {row['board']!r}; "
                              f"known boards: {', '.join(sorted(boards))}")
        board = boards[row["board"]]
        model_path = _model_path(path, row["model"])
        graph = graph_module.read(model_path.read_bytes(), str(model_path))
        latency = _number(path, row, "latency_ms")
        if latency <= 0:
            raise ConfigError(f"{path}: line {number}: latency_ms must be positive, got {latency}")
        measurements.append(Measurement(name=model_path.name, core=board.core, clock_mhz=board.clock_mhz,
                                        latency_ms=latency, macs=graph.macs, features=model_features(graph),
                                        board=board.id))
    return tuple(measurements)


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: cannot read the calibration CSV ({error})") from error
    missing = [column for column in required if not rows or column not in rows[0]]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    return rows


def _number(path: Path, row: dict[str, str], column: str) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {column} {row[column]!r} is not a number") from None


def _model_path(csv_path: Path, name: str) -> Path:
    for folder in (csv_path.parent, csv_path.parent.parent):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{csv_path}: model file {name!r} not found next to the CSV or in its parent folder")
