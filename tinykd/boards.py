"""The board database: data in boards.yaml (and users' own YAML files), never code branches."""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from tinykd.errors import ConfigError

CORES = ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "cortex-m85")
SIMD = ("none", "dsp", "helium")
KERNELS = ("cmsis-nn", "reference")


@dataclass(frozen=True, kw_only=True)
class Board:
    """A Cortex-M board: its core, clock and memories (bytes), and the kernels TFLM is built with for it."""

    id: str
    mcu: str
    core: str
    clock_mhz: float
    flash_bytes: int
    ram_bytes: int
    arena_ram_bytes: int  # the largest contiguous SRAM region: the tensor arena must fit in one piece
    source: str
    simd: str = "dsp"  # "dsp" (Armv7E-M/v8-M DSP extension), "helium" (MVE) or "none"
    fpu: bool = True
    kernels: str = "cmsis-nn"


_TYPES = {"mcu": str, "core": str, "clock_mhz": (int, float), "flash_bytes": int, "ram_bytes": int,
          "arena_ram_bytes": int, "source": str, "simd": str, "fpu": bool, "kernels": str}
_CHOICES = {"core": CORES, "simd": SIMD, "kernels": KERNELS}


def load_boards(extra: Path | None = None) -> dict[str, Board]:
    """Every board tinykd ships, by id, plus (overriding same ids) the boards in the user's YAML file `extra`.

    Raises:
        ConfigError: a board misses a key, has an unknown key or a wrong value; names the file and the key.
    """
    text = (resources.files("tinykd") / "boards.yaml").read_text(encoding="utf-8")
    boards = _parse(yaml.safe_load(text), "boards.yaml")
    if extra is not None:
        try:
            raw = yaml.safe_load(Path(extra).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{extra}: cannot read the boards file ({error})") from error
        boards.update(_parse(raw, str(extra)))
    return boards


def get_board(board_id: str, extra: Path | None = None) -> Board:
    """One board by id; the error lists the ids there are."""
    boards = load_boards(extra)
    if board_id not in boards:
        raise ConfigError(f"target.board: unknown board {board_id!r}; known boards: {', '.join(sorted(boards))}")
    return boards[board_id]


def _parse(raw, source: str) -> dict[str, Board]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of board id to its keys, e.g. my-board: {{core: cortex-m4, "
                          "...}}")
    known = {f.name: f for f in fields(Board) if f.name != "id"}
    required = {name for name, f in known.items() if f.default is MISSING}
    boards = {}
    for board_id, entry in raw.items():
        where = f"{source}: {board_id}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping of keys ({', '.join(known)})")
        for key in entry:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
                raise ConfigError(f"{where}.{key}: unknown key{hint}")
        missing = required - set(entry)
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(sorted(missing))}")
        for key, value in entry.items():
            _check_value(f"{where}.{key}", key, value)
        if entry["arena_ram_bytes"] > entry["ram_bytes"]:
            raise ConfigError(f"{where}.arena_ram_bytes: {entry['arena_ram_bytes']} is more than ram_bytes "
                              f"{entry['ram_bytes']}; it is the largest contiguous region of that RAM")
        boards[str(board_id)] = Board(id=str(board_id), **entry)
    return boards


def _check_value(where: str, key: str, value) -> None:
    expected = _TYPES[key]
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{where}: must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key.endswith("_bytes") or key == "clock_mhz":
        if value <= 0:
            raise ConfigError(f"{where}: must be positive, got {value}")
