"""What a search leaves in its folder: search.json, a Markdown table, a Pareto plot and a recipe with the winner."""

from __future__ import annotations

from pathlib import Path

import yaml

from tinykd import artifacts, config
from tinykd.search.halving import rank
from tinykd.search.space import describe, student_config

COST_KEYS = ("latency_ms", "flash_bytes", "ram_bytes")


def best_trials(trials: list[dict]) -> dict[int, dict]:
    """Each trained candidate's trial at the highest rung it reached, by candidate index."""
    best: dict[int, dict] = {}
    for trial in trials:
        if trial["index"] not in best or trial["rung"] >= best[trial["index"]]["rung"]:
            best[trial["index"]] = trial
    return best


def winner(trials: list[dict]) -> dict:
    """The best trial of the highest rung any candidate reached."""
    top = max(t["rung"] for t in trials)
    return sorted((t for t in trials if t["rung"] == top), key=rank)[0]


def pareto(points: list[dict]) -> list[dict]:
    """The trials no other trial beats on int8 validation accuracy, latency, flash and RAM at once."""
    def dominates(a: dict, b: dict) -> bool:
        no_worse = a["int8_val_accuracy"] >= b["int8_val_accuracy"] and all(a[k] <= b[k] for k in COST_KEYS)
        better = a["int8_val_accuracy"] > b["int8_val_accuracy"] or any(a[k] < b[k] for k in COST_KEYS)
        return no_worse and better

    return [p for p in points if not any(dominates(q, p) for q in points)]


def table(candidates: list[dict], trials: list[dict]) -> str:
    """Markdown: every candidate, its estimated cost, and what training it gave (or why it was not trained)."""
    best = best_trials(trials)
    lines = ["| # | student | latency ms | flash B | RAM B | params | MACs | epochs | int8 val (TFLM) | float val |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for candidate in candidates:
        cost, trial = candidate["cost"], best.get(candidate["index"])
        if trial is not None:
            result = f"{trial['epochs']} | {trial['int8_val_accuracy']:.2%} | {trial['float_val_accuracy']:.2%}"
        else:
            reason = "over budget: " + "; ".join(candidate["over_budget"]) if candidate["over_budget"] else \
                "not trained (time budget)"
            result = f"- | {reason} | -"
        name = candidate["name"] + (" (the recipe's)" if candidate["index"] == 0 else
                                    " (the recipe's, thinned to the budget)" if "thinned_from" in candidate else "")
        lines.append(f"| {candidate['index']} | {name} | {cost['latency_ms']:.3f} | "
                     f"{cost['flash_bytes']:,} | {cost['ram_bytes']:,} | {cost['params']:,} | {cost['macs']:,} | "
                     f"{result} |")
    return "\n".join(lines) + "\n"


def plot(trials: list[dict], chosen: dict, path: Path, title: str) -> Path:
    """Int8 validation accuracy against latency, flash and RAM: every trained candidate at its highest rung, the
    Pareto front ringed, candidate 0 (the recipe's student) and the winner marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    points = list(best_trials(trials).values())
    front = pareto(points)
    figure, axes = pyplot.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for axis, key, label in zip(axes, COST_KEYS, ("estimated latency (ms)", "flash (bytes)", "RAM (bytes)")):
        scatter = axis.scatter([p[key] for p in points], [p["int8_val_accuracy"] for p in points],
                               c=[p["epochs"] for p in points], cmap="viridis", s=30)
        axis.scatter([p[key] for p in front], [p["int8_val_accuracy"] for p in front], s=120, facecolors="none",
                     edgecolors="tab:red", label="Pareto front")
        for p, text in ((p, "recipe's student") for p in points if p["index"] == 0):
            axis.annotate(text, (p[key], p["int8_val_accuracy"]), fontsize=8)
        axis.scatter([chosen[key]], [chosen["int8_val_accuracy"]], marker="*", s=220, c="tab:orange", label="winner")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("int8 validation accuracy (TFLite Micro)")
    axes[0].legend(fontsize=8)
    figure.colorbar(scatter, ax=axes, label="epochs trained")
    figure.suptitle(title)
    return artifacts.save_figure(figure, path)


def recipe(cfg: config.Config, chosen: dict, cost: dict, student: dict, board: str, source: str) -> str:
    """The recipe `tinykd build` takes: `cfg` with the winner as distill.student, named `<name>-searched`.

    A recipe that prunes structurally toward a budget and then rewinds gives the student it thins `rewind_epochs`
    more training. A winner that already meets that budget is not thinned, so the prune stage never rewinds: its
    distillation gets those epochs instead, and the searched student trains as long as the default one does.
    """
    plain = config.as_dict(cfg)
    plain["name"] = f"{cfg.name}-searched"
    plain["distill"]["student"] = student
    # A section that is off is written `none`, as recipes write it (a null would be switched on by --smoke).
    plain = {key: "none" if value is None else value for key, value in plain.items()}
    if chosen["index"] != 0:
        # Hint and attention layers were chosen for the recipe's student; another student may not have them.
        plain["distill"]["hints"], plain["distill"]["attention"] = [], []
    header = (f"# Written by `tinykd search {source}`: the recipe with the searched student "
              f"({describe(student_config(student))}).\n"
              f"#   tinykd build {{path}}\n"
              f"# Target board: {board}. In the search: int8 validation accuracy {chosen['int8_val_accuracy']:.2%} in "
              f"TFLite Micro after {chosen['epochs']} distillation epochs (post-training quantized), estimated "
              f"{chosen['latency_ms']:.3f} ms, {chosen['flash_bytes']:,} B flash, {chosen['ram_bytes']:,} B RAM.\n")
    rewind = unused_rewind_epochs(cfg, cost, board)
    if rewind:
        plain["distill"]["epochs"] = cfg.distill.epochs + rewind
        header += (f"# distill.epochs {cfg.distill.epochs} + {rewind}: this student already meets prune.budget, so "
                   f"pruning removes nothing and never rewinds; its {rewind} rewind epochs go to distillation.\n")
    return header + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=110)


def unused_rewind_epochs(cfg: config.Config, cost: dict, board: str) -> int:
    """`prune.rewind_epochs` when the recipe's structured pruning would leave a student costing `cost` on `board`
    untouched (it already meets `prune.budget` there), else 0."""
    prune = cfg.prune
    if prune is None or prune.method != "structured" or prune.budget is None or not prune.rewind_epochs:
        return 0
    if (prune.budget.board or cfg.target.board) != board:
        return 0  # the candidate was measured on another board than the one pruning checks
    return prune.rewind_epochs if prune.budget.met_by(cost) else 0
