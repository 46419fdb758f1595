"""`tinykd search`: sample students from the zoo, drop those over the budget before any training, distil the rest
from the cached teacher with successive halving, and write the table, a Pareto plot and a recipe with the winner.

    space (space.py) -> measure untrained, int8, on the board (measure.py) -> successive halving (halving.py),
    bracket after bracket while `search.hours` lasts -> search.json, table.md, pareto.png, recipe.yaml (results.py)

Everything lands in the output folder (default runs/<name>/search/); the teacher is the build's own stage, in
runs/<name>/teacher/ with the shared teacher cache, so a later `tinykd build` of the written recipe reuses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from tinykd import artifacts, config, data as data_layer, teacher
from tinykd.artifacts import Run
from tinykd.boards import Board, get_board
from tinykd.search import halving, results, space
from tinykd.search.measure import (BUDGET_KEYS, Cost, check_feasible, fit_width, measure, over_budget,
                                   thin_to_budget)


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """How to run a search, as opposed to what to search (the recipe's `search:` section)."""

    out_dir: Path | None = None  # default runs/<name>/search
    data_dirs: tuple[Path, ...] = ()
    log: Callable[[str], None] = lambda message: None
    source: str = "RECIPE"  # the recipe's path, for the written recipe's header


@dataclass(frozen=True)
class SearchResult:
    """A finished search: its folder and the contents of its search.json."""

    out_dir: Path
    summary: dict

    @property
    def recipe(self) -> Path:
        return self.out_dir / "recipe.yaml"


def search(cfg: config.Config, runs_dir: Path, options: SearchOptions = SearchOptions()) -> SearchResult:
    """Search the recipe's space for the best student within its budget; resumes from the trials on disk.

    With `search.hours`, the search runs brackets until the time is spent (Hyperband's outer loop): each bracket
    samples `search.trials` new candidates and runs successive halving over those within the budget, and the
    winner is the best trial of the highest rung, across brackets. Without it, one bracket.

    Raises:
        SearchError: no candidate of the first bracket meets the budget (names the smallest candidate's latency,
            flash and RAM).
    """
    started = time.perf_counter()
    run = Run(Path(runs_dir) / cfg.name, log=options.log)
    out = Path(options.out_dir) if options.out_dir is not None else run.root / "search"
    limit = cfg.search.hours * 3600.0 if cfg.search.hours is not None else None

    # 1. data, as the build loads it
    data = data_layer.load(cfg.data, cfg.data.seed, options.data_dirs, frontend=cfg.frontend)

    # 2. the first bracket's candidates: the recipe's student and seeded draws, each measured untrained on the board
    board = get_board(cfg.search.board or cfg.target.board)
    budget = {key: getattr(cfg.search, key) for key in BUDGET_KEYS}
    candidates, measure_seconds = _candidates(cfg, data, board, budget, out, options.log, bracket=0, earlier=[])

    # 3. the budget drops candidates before any training; none left is an error naming the smallest
    check_feasible(candidates, budget, board.id)

    # 4. the teacher and its soft targets: the build's teacher stage, cached across runs
    teachers = teacher.stage(run, cfg, data)

    # 5. successive halving per bracket: many candidates briefly, the best ones longer; one record per trial
    trials = halving.Trials(folder=out / "trials", cfg=cfg, data=data, teaching=teachers.teaching,
                            teacher_id=teachers.run_id, log=options.log)
    records, bracket, found, warnings = [], 0, candidates, []

    def spent() -> float:  # recorded seconds, so a resumed search does not get its hours again
        return measure_seconds + sum(r["seconds"] for r in records)

    while True:
        feasible = [c for c in found if not c["over_budget"]]
        options.log(f"[search] bracket {bracket}: {len(feasible)} of {len(found)} candidates within the budget "
                    f"on {board.id}")
        records += [record | {"bracket": bracket} for record in halving.run(trials, feasible, spent())]
        warning = halving.near_chance([r for r in records if r["bracket"] == bracket], data.val.y)
        if warning is not None:
            options.log(f"[search] warning: bracket {bracket}: {warning}")
            warnings.append(f"bracket {bracket}: {warning}")
        # halving starts no trial past the limit, but the last one it started may end there
        stopped = limit is not None and spent() >= limit
        if limit is None or stopped:
            break
        bracket += 1
        found, seconds = _candidates(cfg, data, board, budget, out, options.log, bracket, earlier=candidates)
        measure_seconds += seconds
        if not found:
            options.log(f"[search] the space holds no student the {bracket} brackets have not drawn: done")
            break
        candidates += found

    # 6. results: search.json, the table, the Pareto plot and the recipe with the winner
    summary = _write(cfg, out, candidates, records, budget, board, options.source)
    summary |= {"brackets": 1 + max(c["bracket"] for c in candidates), "stopped_by_time_budget": stopped,
                "warnings": warnings,
                "measure_seconds": round(measure_seconds, 1),
                "search_seconds": round(spent(), 1),
                "wall_seconds_this_run": round(time.perf_counter() - started, 1)}
    artifacts.write_json(out / "search.json", summary)
    return SearchResult(out, summary)


def _candidates(cfg: config.Config, data, board: Board, budget: dict, out: Path, log, bracket: int,
                earlier: list[dict]) -> tuple[list[dict], float]:
    """Sample and measure one bracket's candidates (the first starts with the recipe's student, and ends with it
    thinned to the budget when it is over; later ones draw students no earlier bracket drew), or reuse them from
    disk when the space, board, data and recipe are unchanged."""
    from tinykd.report.arena import Worker

    chosen_space = space.resolve(cfg.search, space.data_kind(cfg))
    key = artifacts.key("candidates", asdict(chosen_space), cfg.search.trials, cfg.search.seed,
                        cfg.search.fit_width, config.as_dict(cfg.distill.student), config.as_dict(cfg.prune),
                        cfg.seed, board.id, data.fingerprint, bracket, [c["name"] for c in earlier])
    path = out / ("candidates.json" if bracket == 0 else f"candidates-b{bracket}.json")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            log(f"[search] reusing the {len(saved['candidates'])} candidates measured in {path}")
            return _judged(saved["candidates"], budget), saved["seconds"]
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    drawn = tuple(space.student_config(c.get("drawn", c["student"])) for c in earlier)
    students = space.sample(chosen_space, cfg.search.trials, cfg.search.seed if bracket == 0 else
                            [cfg.search.seed, bracket], cfg.distill.student if bracket == 0 else None,
                            tuple(data.input_shape), exclude=drawn)
    fitting = " and fitting each draw's width to the budget" if cfg.search.fit_width else ""
    log(f"[search] bracket {bracket}: measuring {len(students)} untrained candidates as int8 models on {board.id}"
        f"{fitting}")
    candidates, taken = [], {c["name"] for c in earlier}

    def add(student: config.ModelConfig, cost, record: dict, source: str) -> None:
        name = space.describe(student)
        if name in taken:
            log(f"[search] {name}{f' ({source})' if source else ''} is already a candidate: skipped")
            return
        taken.add(name)
        index = len(earlier) + len(candidates)
        candidates.append({"index": index, "name": name, "bracket": bracket, "student": config.as_dict(student),
                           "cost": asdict(cost)} | record)
        log(f"[candidate {index}] {name}{f' ({source})' if source else ''}: {cost.latency_ms:.3f} ms, "
            f"{cost.flash_bytes:,} B flash, {cost.ram_bytes:,} B RAM")

    with Worker() as worker:
        def measure_at(student: config.ModelConfig):
            return measure(student, data, cfg, board, worker)

        for number, student in enumerate(students):
            cost, record, source = measure_at(student), {}, ""
            if cfg.search.fit_width and not (bracket == 0 and number == 0):  # the recipe's student stays itself
                width, cost, probes = fit_width(student, cost, budget, lambda w: measure_at(
                    replace(student, width_multiplier=w)))
                record = {"drawn": config.as_dict(student), "drawn_name": space.describe(student),
                          "fit_measurements": probes}
                student = replace(student, width_multiplier=width)
                if space.describe(student) != record["drawn_name"]:
                    source = f"fitted from {record['drawn_name']}"
            add(student, cost, record, source)
        # The recipe's student over the budget cannot win. Thinned as structured pruning thins it, it is what a build
        # of the recipe would ship under this budget, the student a searched one has to beat: measured too.
        if bracket == 0 and candidates and over_budget(candidates[0]["cost"], budget):
            reference = students[0]
            found = thin_to_budget(reference, cfg.prune, Cost(**candidates[0]["cost"]), budget, measure_at)
            if found is None:
                log(f"[search] the recipe's student cannot be thinned to the budget in {cfg.prune.max_steps} steps "
                    f"of {cfg.prune.step_fraction:.0%} (prune.max_steps, prune.step_fraction)")
            else:
                student, cost, probes = found
                add(student, cost, {"thinned_from": space.describe(reference), "fit_measurements": probes},
                    "the recipe's student, thinned to the budget")
    seconds = time.perf_counter() - started
    artifacts.write_json(path, {"key": key, "candidates": candidates, "seconds": seconds})
    return _judged(candidates, budget), seconds


def _judged(candidates: list[dict], budget: dict) -> list[dict]:
    """`candidates` with `over_budget`: what each exceeds (empty when it is within the budget)."""
    return [c | {"over_budget": over_budget(c["cost"], budget)} for c in candidates]


def _write(cfg, out: Path, candidates: list[dict], records: list[dict], budget: dict, board: Board,
           source: str) -> dict:
    summary = {"recipe": cfg.name, "board": board.id, "budget": budget, "space": asdict(
        space.resolve(cfg.search, space.data_kind(cfg))), "rungs": list(halving.rungs(cfg.search)),
        "candidates": candidates, "trials": records, "winner": None}
    artifacts.write_text(out / "table.md", results.table(candidates, records))
    if not records:
        return summary
    chosen = results.winner(records)
    student = candidates[chosen["index"]]["student"]
    summary["winner"] = chosen | {"student": student}
    summary["pareto"] = [p["index"] for p in results.pareto(list(results.best_trials(records).values()))]
    results.plot(records, chosen, out / "pareto.png", f"{cfg.name}: searched students on {board.id}")
    text = results.recipe(cfg, chosen, candidates[chosen["index"]]["cost"], student, board.id, source)
    artifacts.write_text(out / "recipe.yaml", text.replace("{path}", str(out / "recipe.yaml")))
    return summary
