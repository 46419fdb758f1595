"""The board database: data in boards.yaml (and users' own YAML files), never code branches."""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources

import yaml

from tinykd.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Board:
    """A Cortex-M board: its core, clock and memories (bytes)."""

    id: str
    mcu: str
    core: str
    clock_mhz: float
    flash_bytes: int
    ram_bytes: int
    arena_ram_bytes: int
    source: str


def load_boards() -> dict[str, Board]:
    """Every board tinykd ships, by id."""
    raw = yaml.safe_load((resources.files("tinykd") / "boards.yaml").read_text(encoding="utf-8"))
    names = {f.name for f in fields(Board)} - {"id"}
    boards = {}
    for board_id, entry in raw.items():
        missing = names - set(entry)
        if missing:
            raise ConfigError(f"boards.yaml: {board_id}: missing {', '.join(sorted(missing))}")
        boards[board_id] = Board(id=board_id, **{k: entry[k] for k in names})
    return boards


def get_board(board_id: str) -> Board:
    """One board by id; the error lists the ids there are."""
    boards = load_boards()
    if board_id not in boards:
        raise ConfigError(f"target.board: unknown board {board_id!r}; known boards: {', '.join(sorted(boards))}")
    return boards[board_id]
