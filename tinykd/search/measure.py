"""Every candidate measured without training: its untrained weights converted to int8 and `tinykd report` on the
board. Latency, flash and RAM depend on the graph and tensor shapes, not on the weights' values, so an untrained
model costs what the trained one will (the build's pruning and QAT keep the graph too).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinykd import config, models
from tinykd.boards import Board
from tinykd.data import Dataset
from tinykd.errors import SearchError

BUDGET_KEYS = ("latency_ms", "flash_bytes", "ram_bytes")
CALIBRATION_SAMPLES = 32  # ranges do not change sizes or latency; a few samples make a valid int8 model


@dataclass(frozen=True, kw_only=True)
class Cost:
    """One candidate on one board, as `tinykd report` estimates it."""

    latency_ms: float
    flash_bytes: int
    ram_bytes: int
    arena_host_bytes: int
    tflite_bytes: int
    macs: int
    params: int
    fits_board: bool


def measure(student: config.ModelConfig, data: Dataset, cfg: config.Config, board: Board, worker) -> Cost:
    """Convert the untrained `student` to int8 and estimate it on `board` (`worker`: a tinykd.report.arena.Worker
    kept up across candidates)."""
    from tinykd.convert import int8_model
    from tinykd.report import analyze, for_board

    model = models.build(student, data.input_shape, data.num_classes, "student", seed=cfg.seed)
    tflite = int8_model(model, data, cfg, CALIBRATION_SAMPLES)
    found = for_board(analyze(tflite, "candidate", worker), board)
    return Cost(latency_ms=found.latency_ms, flash_bytes=found.flash_bytes, ram_bytes=found.ram_bytes,
                arena_host_bytes=found.arena_host_bytes, tflite_bytes=len(tflite), macs=found.macs,
                params=int(model.count_params()), fits_board=found.fits)


def over_budget(cost: dict, budget: dict) -> list[str]:
    """What `cost` (a Cost as a dict) exceeds: e.g. ["latency_ms 3.1 > 2.5"]; empty when it is feasible."""
    over = [f"{key} {cost[key]:,.4g} > {limit:,.4g}" if key == "latency_ms" else f"{key} {cost[key]:,} > {limit:,}"
            for key, limit in budget.items() if limit is not None and cost[key] > limit]
    if not cost["fits_board"]:
        over.append("does not fit the board's flash or RAM")
    return over


def check_feasible(candidates: list[dict], budget: dict, board: str) -> None:
    """Raise SearchError when no candidate meets the budget, naming the smallest one's figures.

    The smallest is the one with the lowest latency (ties: flash, then RAM): the nearest any student came.
    """
    if any(not c["over_budget"] for c in candidates):
        return
    smallest = min(candidates, key=lambda c: (c["cost"]["latency_ms"], c["cost"]["flash_bytes"],
                                              c["cost"]["ram_bytes"]))
    cost = smallest["cost"]
    limits = ", ".join(f"{key} <= {value:,}" for key, value in budget.items() if value is not None) or "the board"
    raise SearchError(
        f"no candidate of the {len(candidates)} measured meets the budget ({limits}) on {board}: the smallest, "
        f"candidate {smallest['index']} ({smallest['name']}), needs {cost['latency_ms']:.3f} ms, "
        f"{cost['flash_bytes']:,} B flash and {cost['ram_bytes']:,} B RAM. Raise the budget (--budget), or open the "
        "space toward smaller students (search.filters, search.blocks, search.first_strides in the recipe)")
