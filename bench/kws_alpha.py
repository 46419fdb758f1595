"""Choose the keyword recipe's `distill.alpha` on the validation clips, over 3 student seeds per alpha.

    python bench/kws_alpha.py --builds RUNS/kws_dscnn-a0-s0 ... --carry bench/results/kws.json@COMMIT

Builds nothing: it reads finished builds of the recipe that differ only in `--set distill.alpha=A` and `seed`
(`tinykd build pipelines/kws_dscnn.yaml --set distill.alpha=A --set seed=N ...`, one data set), and, with
`--carry`, the recipe arm of an earlier bench/kws.py results file (its alpha read from the recipe at that commit).
Each arm is judged by its QAT model's accuracy on the 468 validation clips (the last figure a build measures
before conversion, and the only one not on the test split); the test split's int8 figures are written beside it,
never used to choose. Every arm must report the same teacher accuracy, the check that they share the teacher and
the data. Writes bench/results/kws_alpha.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _results, _write_result  # noqa: E402

CHOSEN_ON = "quantize"  # the stage whose validation accuracy chooses: the QAT model that becomes the int8 one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=Path, nargs="+", required=True, help="finished build folders (report.json)")
    parser.add_argument("--carry", help="an earlier bench/kws.py results file, FILE@COMMIT: its kd arm")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kws_alpha.json")
    args = parser.parse_args()

    runs = [_from_build(folder) for folder in args.builds] + (_from_results(args.carry) if args.carry else [])
    teachers = {(r["teacher_val_accuracy"], r["teacher_test_accuracy"]) for r in runs}
    if len(teachers) != 1:
        sys.exit(f"the arms were taught by different teachers (validation, test: {sorted(teachers)}): build them "
                 "from one data set and one teacher config")
    arms = {}
    for run in sorted(runs, key=lambda r: (r["alpha"], r["seed"])):
        arms.setdefault(run["alpha"], []).append(run)
    for alpha, members in arms.items():
        seeds = [r["seed"] for r in members]
        if len(set(seeds)) != len(seeds):
            sys.exit(f"alpha {alpha:g}: seeds {seeds} repeat; give one build per seed")
    summary = {f"{alpha:g}": _arm(members) for alpha, members in arms.items()}
    chosen = max(summary, key=lambda alpha: summary[alpha]["val_accuracy"])
    teacher_val, teacher_test = teachers.pop()
    result = {
        "chosen_alpha": float(chosen),
        "chosen_on": f"mean validation accuracy of the {CHOSEN_ON} stage (QAT model), {len(summary[chosen]['seeds'])} "
                     "seeds; test figures reported, not used",
        "teacher_val_accuracy": teacher_val,
        "teacher_test_accuracy": teacher_test,
        "arms": summary,
        "runs": runs,
    }
    _write_result(result, args.out, "bench/kws_alpha.py")


def _arm(members: list[dict]) -> dict:
    """One alpha's means and per-seed figures."""
    def column(key):
        return [r[key] for r in members]
    return {"seeds": column("seed"),
            "val_accuracy": statistics.mean(column("val_accuracy")), "val_accuracy_seeds": column("val_accuracy"),
            "int8_test_accuracy": statistics.mean(column("int8_test_accuracy")),
            "int8_test_accuracy_seeds": column("int8_test_accuracy"),
            "distill_val_accuracy_seeds": column("distill_val_accuracy"),
            "sources": sorted({r["source"] for r in members})}


def _figures(stages: list[dict], alpha: float, seed: int, source: str) -> dict:
    by_stage = {s["stage"]: s for s in stages}
    return {"alpha": alpha, "seed": seed, "source": source,
            "val_accuracy": by_stage[CHOSEN_ON]["val_accuracy"],
            "distill_val_accuracy": by_stage["distill"]["val_accuracy"],
            "int8_test_accuracy": by_stage["int8"]["test_accuracy"],
            "teacher_val_accuracy": by_stage["teacher"]["val_accuracy"],
            "teacher_test_accuracy": by_stage["teacher"]["test_accuracy"]}


def _from_build(folder: Path) -> dict:
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"{folder}: no finished build ({error}); build it with tinykd build first")
    recipe = report["recipe"]
    return _figures(report["stages"], float(recipe["distill"]["alpha"]), int(recipe["seed"]),
                    f"build {folder} on {recipe['data']['path']}")


def _from_results(spec: str) -> list[dict]:
    """The kd arm of a results file as COMMIT left it, with the alpha of the recipe at that commit."""
    _, _, commit = spec.partition("@")
    if not commit:
        sys.exit(f"--carry {spec}: name the commit (FILE@COMMIT), so the alpha is read from the recipe it ran")
    results, source = _results(Path(spec))
    recipe = f"pipelines/{results['recipe']}.yaml"
    shown = subprocess.run(["git", "show", f"{commit}:{recipe}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode:
        sys.exit(f"--carry {spec}: cannot read {recipe} at {commit}: {shown.stderr.strip()}")
    alpha = float(yaml.safe_load(shown.stdout)["distill"]["alpha"])
    return [_figures(run["stages"], alpha, run["seed"], f"{run['name']} of {source}") for run in results["runs"]["kd"]]


if __name__ == "__main__":
    main()
