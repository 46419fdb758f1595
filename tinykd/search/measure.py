"""Every candidate measured without training: its untrained weights converted to int8 and `tinykd report` on the
board. Latency, flash and RAM depend on the graph and tensor shapes, not on the weights' values, so an untrained
model costs what the trained one will (the build's pruning and QAT keep the graph too), once its biases are made
distinct as training makes them (`_distinct_biases`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

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
    _distinct_biases(model, cfg.seed)
    tflite = int8_model(model, data, cfg, CALIBRATION_SAMPLES)
    found = for_board(analyze(tflite, "candidate", worker), board)
    return Cost(latency_ms=found.latency_ms, flash_bytes=found.flash_bytes, ram_bytes=found.ram_bytes,
                arena_host_bytes=found.arena_host_bytes, tflite_bytes=len(tflite), macs=found.macs,
                params=int(model.count_params()), fits_board=found.fits)


def _distinct_biases(model, seed: int) -> None:
    """Give every bias (and batch normalization's offset, which folds into one) small seeded values.

    Untrained biases are all zero, and the converter stores identical constants once: an untrained student
    converts a few hundred bytes smaller than it ships once trained (680 B for a five-block DS-CNN), when each
    bias is its own buffer.
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.name.rsplit("/", 1)[-1].split(":")[0] in ("bias", "beta"):
            weight.assign(rng.normal(0.0, 0.01, weight.shape).astype(np.float32))


# Widths a fitted student may take: eighths of the drawn filters, from an eighth to eight times (config's limit).
WIDTHS = tuple(step / 8 for step in range(1, 65))


def fit_width(student: config.ModelConfig, first: Cost, budget: dict, measure_at) -> tuple[float, Cost, int]:
    """The widest `WIDTHS` multiplier of `student` that meets `budget` (and fits the board), its cost, and how many
    measurements it took; `first` is the cost at the student's own width, `measure_at(width) -> Cost`.

    The start is a guess from `first`: latency and the model's bytes grow about with the square of the width (a
    convolution's MACs and weights are channels in times channels out), the runtime's code not at all. From there
    the search steps up or down, doubling the step, until it brackets the boundary, then bisects the grid. Cost is
    assumed to grow with width; when even an eighth misses, the eighth comes back (over budget) for the record.
    """
    def meets(cost: Cost) -> bool:
        return not over_budget(vars(cost), budget)

    costs = {student.width_multiplier: first}

    def at(index: int) -> Cost:
        width = WIDTHS[index]
        if width not in costs:
            costs[width] = measure_at(width)
        return costs[width]

    ratios = [limit / vars(first)[key] for key, limit in budget.items() if limit is not None and key != "flash_bytes"]
    if budget.get("flash_bytes") is not None:  # the model's bytes scale, the runtime's code beside them does not
        runtime = first.flash_bytes - first.tflite_bytes
        ratios.append(max(budget["flash_bytes"] - runtime, 1) / first.tflite_bytes)
    guess = student.width_multiplier * math.sqrt(min(ratios)) if ratios else student.width_multiplier
    start = min(range(len(WIDTHS)), key=lambda i: abs(WIDTHS[i] - guess))
    if meets(at(start)):
        good, bad, step = start, None, 1
        while bad is None and good < len(WIDTHS) - 1:
            probe = min(good + step, len(WIDTHS) - 1)
            good, bad = (probe, None) if meets(at(probe)) else (good, probe)
            step *= 2
        if bad is None:
            return WIDTHS[good], at(good), len(costs) - 1
    else:
        good, bad, step = None, start, 1
        while good is None and bad > 0:
            probe = max(bad - step, 0)
            good, bad = (probe, bad) if meets(at(probe)) else (None, probe)
            step *= 2
        if good is None:
            return WIDTHS[0], at(0), len(costs) - 1
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if meets(at(middle)) else (good, middle)
    return WIDTHS[good], at(good), len(costs) - 1


def thin_to_budget(student: config.ModelConfig, prune: config.PruneConfig, first: Cost, budget: dict,
                   measure_at) -> tuple[config.ModelConfig, Cost, int] | None:
    """The recipe's `student` thinned as its structured pruning thins it, until it meets `budget`; its cost and how
    many measurements it took. None for a model of your own, or when `prune.max_steps` steps or the narrowest
    widths come first. `first` is the cost of `student`, `measure_at(student) -> Cost`.

    Each step removes `prune.step_fraction` of every block's filters (and hidden units), each keeping the nearest
    multiple of `prune.channel_multiple`, and the step that meets the budget removes only the least share that does
    (bisected to 1/64 of a step), as tinykd.prune does. When every layer loses the same share (`prune.scope` layer)
    the widths do not depend on the weights, so the shape is the one the build's pruning reaches when no step costs
    too much accuracy; with `scope: global` the build's shape depends on the trained weights and may differ.
    """
    from tinykd.structured import least_fraction

    if student.path is not None or student.factory is not None:
        return None
    costs = {student: first}

    def at(model: config.ModelConfig) -> Cost:
        if model not in costs:
            costs[model] = measure_at(model)
        return costs[model]

    def meets(model: config.ModelConfig) -> bool:
        return not over_budget(vars(at(model)), budget)

    current = student
    for _ in range(prune.max_steps):
        if meets(current):
            break
        step = thinned(current, prune.step_fraction, prune.channel_multiple)
        if step == current:
            return None
        if meets(step):
            share = least_fraction(lambda share: meets(thinned(current, share, prune.channel_multiple)),
                                   prune.step_fraction)
            step = thinned(current, share, prune.channel_multiple)
        current = step
    return (current, at(current), len(costs) - 1) if meets(current) else None


def thinned(student: config.ModelConfig, fraction: float, multiple: int) -> config.ModelConfig:
    """`student` with `fraction` of every block's filters and of its hidden units removed, each keeping the
    nearest multiple of `multiple` (tinykd.structured's rule for one layer)."""
    from tinykd.structured import kept_width

    def keep(width: int) -> int:
        return kept_width(width, width * (1.0 - fraction), multiple)

    return replace(student, filters=tuple(keep(width) for width in models.widths(student)), width_multiplier=1.0,
                   dense_units=keep(student.dense_units) if student.dense_units else 0)


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
