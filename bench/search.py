"""Benchmark `tinykd search`: does a searched student beat the recipe's default student at the same cost?

    python bench/search.py                       (the full benchmark: 2 h of search per recipe + 12 builds)
    python bench/search.py --recipes fashion_mnist --hours 0.5 --seeds 0 --reduced   (a reduced run)

For each recipe (Fashion-MNIST on nucleo-l4r5zi, keyword spotting on nrf5340dk):
1. the default recipe built through the full pipeline with each seed; the student it ships (after its
   pruning), estimated on the board by each build's report, sets the budget: latency_ms and flash_bytes;
2. `tinykd search` within that budget and `--hours` (2 by default) on this machine, with the teacher the
   default builds cached;
3. the written recipe (the searched student, the recipe's other sections unchanged) built the same way; int8
   accuracy in TFLite Micro on the test split, latency and flash from each build's report.
The target: searched int8 accuracy (mean of the seeds) at least 0.5 points above the default's, at equal or lower
estimated latency and flash. Also reported: the best student the search found under half the latency budget.
Writes bench/results/search.json (per recipe, with the machine and the command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _build, _machine, _results  # noqa: E402
from tinykd import config  # noqa: E402

RECIPES = {"fashion_mnist": ("fashion_mnist.yaml", "nucleo-l4r5zi"), "kws": ("kws_dscnn.yaml", "nrf5340dk")}
TARGET_POINTS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--hours", type=float, default=2.0, help="search budget per recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--default-seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="seeds whose default builds run here (default: --seeds); the others' figures come "
                             "from --carry-default")
    parser.add_argument("--carry-default", type=Path, default=None, metavar="FILE[@COMMIT]",
                        help="a bench/fashion_mnist.py or bench/kws.py result holding the default builds of the "
                             "seeds not in --default-seeds; refused unless every seed built here reproduces its "
                             "int8 accuracy, latency and flash exactly")
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "search.json")
    parser.add_argument("--search-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra --set for the search only, e.g. search.trials=8 search.max_epochs=9")
    parser.add_argument("--common-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra --set for the search and every build, e.g. teacher.epochs=4 (a reduced run)")
    parser.add_argument("--kws-data", type=Path, default=None, metavar="DIR",
                        help="a keyword set `tinykd data keywords` made (data.path for the kws recipe's search and "
                             "builds, not an override of the recipe); default: the recipe synthesizes its own")
    parser.add_argument("--smoke", action="store_true", help="every search and build with --smoke (checks the script)")
    parser.add_argument("--reduced", action="store_true",
                        help="mark the result as a reduced run (fewer hours, seeds or trials than the target asks)")
    args = parser.parse_args()

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.recipes:
        results[name] = _one_recipe(name, args)
        # Per recipe too: a later run of one recipe rewrites the top-level machine, not where the other ran.
        results["machine"] = results[name]["machine"] = _machine()
        results["command"] = results[name]["command"] = "python bench/search.py " + " ".join(sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=2) + "\n")
        temporary.replace(args.out)
    print(json.dumps({k: {key: v for key, v in r.items() if key not in ("default_runs", "searched_runs")}
                      for k, r in results.items() if k in RECIPES}, indent=2))


def _one_recipe(name: str, args) -> dict:
    file, board = RECIPES[name]
    recipe = REPO / "pipelines" / file
    where = ([f"data.path={args.kws_data.resolve()}", "data.synthesize=false"]
             if name == "kws" and args.kws_data is not None else [])
    cfg = config.load(recipe, config.parse_overrides(where + args.common_set), smoke=args.smoke)
    common = [f"target.board={board}"] + where + args.common_set
    # The default student is the one the recipe ships: built first (its teacher is then cached for the search),
    # its int8 model's estimated latency and flash on the board are the budget. A recipe that prunes toward a
    # budget ships a thinner student than its distill.student, so the untrained one would set too loose a budget.
    built = args.seeds if args.default_seeds is None else args.default_seeds
    defaults = [_build(recipe, args.runs, f"{cfg.name}-default-s{s}", s, common, args.smoke) for s in built]
    defaults += _carried_defaults(cfg.name, defaults, [s for s in args.seeds if s not in built], args.carry_default)
    defaults.sort(key=lambda r: args.seeds.index(r["seed"]) if r["seed"] in args.seeds else len(args.seeds))
    default = {key: statistics.mean(r["report"]["board"][key] for r in defaults)
               for key in ("latency_ms", "flash_bytes", "ram_bytes")}
    default["unpruned"] = _default_cost(cfg, board)
    print(f"{name}: default student {default['latency_ms']:.3f} ms, {default['flash_bytes']:,.0f} B flash on "
          f"{board} (before pruning {default['unpruned']['latency_ms']:.3f} ms)", flush=True)

    out = args.runs / f"{cfg.name}-search"
    command = [sys.executable, "-m", "tinykd", "search", str(recipe), "--board", board, "--runs", str(args.runs),
               "-o", str(out), "--hours", str(args.hours),
               "--budget", f"latency_ms={default['latency_ms']},flash_bytes={int(default['flash_bytes'])}"]
    for pair in where + args.common_set + args.search_set:
        command += ["--set", pair]
    command += ["--smoke"] if args.smoke else []
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (args.runs / f"{cfg.name}-search.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        sys.exit(f"search {name} failed (exit {completed.returncode}); see {args.runs / f'{cfg.name}-search.log'}")
    summary = json.loads((out / "search.json").read_text())

    searched = [_build(out / "recipe.yaml", args.runs, f"{cfg.name}-searched-s{s}", s, common, args.smoke)
                for s in args.seeds]
    return _summary(defaults, searched, summary, default, wall, args)


def _carried_defaults(recipe_name: str, built: list[dict], seeds: list[int], path: Path | None) -> list[dict]:
    """The default builds of `seeds` read from an earlier benchmark's result (`FILE` or `FILE@COMMIT`), shaped as
    `_build` returns them. Carrying is a claim that the pipeline is unchanged, so it is checked: every seed built
    here that the file also holds must match it exactly (int8 accuracy in TFLM, latency and flash)."""
    if not seeds:
        return []
    if path is None:
        sys.exit(f"default builds of seeds {seeds} are neither built (--default-seeds) nor carried (--carry-default)")
    result, source = _results(path)
    if result.get("recipe") != recipe_name:
        sys.exit(f"{source}: recipe {result.get('recipe')!r}, not {recipe_name!r}; carry a result of the same recipe")
    runs = {run["seed"]: run for run in result["runs"]["kd"]}

    def figures(int8: dict) -> tuple:
        return (int8["tflm_accuracy"], round(int8["latency_ms"], 6), int8["flash_bytes"])

    def board(run: dict) -> dict:
        return next(stage["int8"] for stage in run["stages"] if stage["stage"] == "int8")

    checked = []
    for own in built:
        if own["seed"] in runs:
            mine = figures(own["report"]["int8"] | own["report"]["board"])
            theirs = figures(board(runs[own["seed"]]))
            if mine != theirs:
                sys.exit(f"{source}: seed {own['seed']} built here gives {mine} (accuracy, ms, flash), the file "
                         f"{theirs}: the pipeline changed since, so its other seeds cannot be carried")
            checked.append(own["seed"])
    if not checked:
        sys.exit(f"{source}: no seed built here is in the file, so nothing shows its builds are reproducible")
    missing = [s for s in seeds if s not in runs]
    if missing:
        sys.exit(f"{source}: holds no default build of seeds {missing}")
    note = f"carried from {source} (its seeds {checked} rebuilt here gave identical accuracy, latency and flash)"
    return [{"name": runs[s]["name"], "seed": s, "seconds": runs[s]["seconds"], "carried": note,
             "report": {"int8": board(runs[s]), "board": board(runs[s])}} for s in seeds]


def _default_cost(cfg, board: str) -> dict:
    """The recipe's distill.student before pruning, measured as the search measures every candidate
    (tinykd.search.measure): for the record, next to the shipped student's budget."""
    from tinykd.boards import get_board
    from tinykd.data import load
    from tinykd.report.arena import Worker
    from tinykd.search.measure import measure

    data = load(cfg.data, cfg.data.seed, frontend=cfg.frontend)
    with Worker() as worker:
        cost = measure(cfg.distill.student, data, cfg, get_board(board), worker)
    return {"latency_ms": cost.latency_ms, "flash_bytes": cost.flash_bytes, "ram_bytes": cost.ram_bytes}


def _summary(defaults: list[dict], searched: list[dict], summary: dict, default: dict, wall: float, args) -> dict:
    def mean(runs: list[dict], key: str) -> float:
        return statistics.mean(r["report"]["int8"]["tflm_accuracy"] if key == "acc" else r["report"]["board"][key]
                               for r in runs)

    half = [t for t in summary["trials"] if t["latency_ms"] <= default["latency_ms"] / 2]
    best_half = max(half, key=lambda t: (t["rung"], t["int8_val_accuracy"]), default=None)
    result = {
        "board": summary["board"], "budget": summary["budget"], "seeds": args.seeds, "hours": args.hours,
        "default_student_before_pruning": default["unpruned"],
        "default_int8_accuracy": mean(defaults, "acc"), "searched_int8_accuracy": mean(searched, "acc"),
        "default_int8_accuracy_seeds": [r["report"]["int8"]["tflm_accuracy"] for r in defaults],
        "searched_int8_accuracy_seeds": [r["report"]["int8"]["tflm_accuracy"] for r in searched],
        "default_latency_ms": mean(defaults, "latency_ms"), "searched_latency_ms": mean(searched, "latency_ms"),
        "default_flash_bytes": round(mean(defaults, "flash_bytes")),
        "searched_flash_bytes": round(mean(searched, "flash_bytes")),
        "search_seconds": summary["search_seconds"], "search_wall_seconds": round(wall, 1),
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "candidates": len(summary["candidates"]),
        "feasible_candidates": sum(not c["over_budget"] for c in summary["candidates"]),
        "trials": len(summary["trials"]), "rungs": summary["rungs"], "brackets": summary["brackets"],
        "searched_student": summary["winner"]["name"], "searched_student_config": summary["winner"]["student"],
        "best_under_half_latency": None if best_half is None else {
            k: best_half[k] for k in ("name", "latency_ms", "flash_bytes", "ram_bytes", "int8_val_accuracy",
                                      "epochs")} | {"note": "search trial (int8 validation accuracy after the "
                                                            "trial's epochs), not a full build"},
        "default_runs": [{"seed": r["seed"], "seconds": r["seconds"]} | ({"carried": r["carried"]} if "carried" in r
                                                                          else {}) for r in defaults],
        "searched_runs": [{"seed": r["seed"], "seconds": r["seconds"]} for r in searched],
    }
    gain = result["searched_int8_accuracy"] - result["default_int8_accuracy"]
    result["gain_points"] = round(100 * gain, 2)
    result["target_met"] = (not (args.reduced or args.smoke or args.common_set) and len(args.seeds) >= 3
                            and args.hours <= 2.0 and 100 * gain >= TARGET_POINTS
                            and result["searched_latency_ms"] <= result["default_latency_ms"]
                            and result["searched_flash_bytes"] <= result["default_flash_bytes"])
    if args.smoke:
        result["smoke"] = True
    if args.reduced:
        result["reduced"] = True
        result["notes"] = (f"REDUCED run ({args.hours:g} h search, seeds {args.seeds}, overrides for everything "
                           f"{args.common_set or 'none'}, for the search {args.search_set or 'none'}) on a machine "
                           "shared with other jobs; the target asks 2 h, 3 seeds and the recipe as written, so it "
                           "is not claimed")
    return result


if __name__ == "__main__":
    main()
