"""Benchmark the default Fashion-MNIST recipe against the baselines a user would otherwise write.

    python bench/fashion_mnist.py            (or `make bench`; about an hour on a 2-core machine)

Runs, each through the real `tinykd build` command:
- the default recipe with 3 student seeds; the first build starts from an empty runs folder and trains the
  teacher (`build_seconds`), the others reuse the cached teacher (`rebuild_seconds`, median);
- baseline (a), the hand-written one: same student, labels only, no pruning, post-training quantization, the
  same total epochs (distill + prune + quantize epochs, all spent on labels);
- baseline (b): the same pipeline with distillation off (alpha 0).
Writes bench/results/fashion_mnist.json with the machine it ran on and every target checked.

    python bench/fashion_mnist.py --variants kd --previous bench/results/fashion_mnist.json

builds only the recipe's arm: the others' figures are carried from --carry-from (default: the results file being
replaced) and the JSON names where they came from (`baseline_source`, `no_kd_source`). --previous names the results
of the recipe this one replaces; the targets then compare the new student's accuracy and latency with it. Both
take FILE@COMMIT for a results file as an earlier commit left it:

    python bench/fashion_mnist.py --variants kd --carry-from bench/results/fashion_mnist.json@e08b8bb \
        --previous bench/results/fashion_mnist.json@e08b8bb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tinykd import config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "fashion_mnist.yaml")
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fashion_mnist.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-kd-seeds", type=int, default=3, help="seeds for baseline (b), the first N of --seeds")
    parser.add_argument("--keep-teacher", action="store_true",
                        help="keep the cached teacher of an earlier run; build_seconds then comes from --first-build-log")
    parser.add_argument("--teacher", type=Path, help="load this trained teacher (teacher.path) instead of training one")
    parser.add_argument("--first-build-log", type=Path,
                        help="the log of an earlier first build (teacher trained) of the same recipe and teacher")
    add_variant_options(parser)
    args = parser.parse_args()

    if args.runs.exists():
        for path in args.runs.iterdir():
            if not (args.keep_teacher and path.name == ".teacher_cache"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    cfg = config.load(args.recipe)
    common = [f"teacher.path={args.teacher.resolve()}"] if args.teacher else []
    variants = {name: overrides for name, overrides in _variants(cfg, common).items() if name in args.variants}
    carried = _carried(args.carry_from or args.out, args.variants, cfg)
    previous = previous_default(args.previous)  # read now: --previous may be --out, rewritten at the end
    runs = {name: [] for name in variants}
    for name, overrides in variants.items():
        for seed in (args.seeds[:args.no_kd_seeds] if name == "no_kd" else args.seeds):
            runs[name].append(_build(args.recipe, args.runs, f"{cfg.name}-{name}-s{seed}", seed, overrides))
    noop = _build(args.recipe, args.runs, f"{cfg.name}-kd-s{args.seeds[0]}", args.seeds[0], common,
                  log_name=f"{cfg.name}-kd-s{args.seeds[0]}-noop")  # keeps the first build's log

    result = _summary(runs, noop, cfg, args.first_build_log, carried)
    if previous is not None:
        result["previous_default"] = previous
        result["latency_cut_vs_previous_default"] = 1 - result["student_latency_ms"] / previous["student_latency_ms"]
        result["targets"].update({
            "latency_at_least_30pct_below_previous_default": result["latency_cut_vs_previous_default"] >= 0.30,
            "int8_accuracy_at_least_previous_default":
                result["student_int8_accuracy"] >= previous["student_int8_accuracy"],
        })
    _write_result(result, args.out, "bench/fashion_mnist.py")


VARIANTS = ("kd", "baseline", "no_kd")
# Why a variant's figures may come from an earlier run's JSON: the hand baseline (labels only, no pruning, PTQ,
# the same total epochs) does not depend on the prune section, so a recipe change there leaves it as it was.
CARRY_NOTE = {
    "baseline": "carried from {path} (finished {date}), not re-run: the hand baseline as measured then (labels "
                "only, prune none, quantize none, distill.epochs = distill + prune + quantize epochs, with that "
                "run's data section), on the same validation and test clips",
    "no_kd": "carried from {path} (finished {date}), NOT re-run: it was measured with that run's recipe "
             "(its prune section), so it is not the same pipeline with alpha 0 as the kd figures here",
}


def add_variant_options(parser) -> None:
    """`--variants` (which arms to build) and `--carry-from` (where the others' figures come from)."""
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="build only these arms (kd always); the others' figures come from --carry-from")
    parser.add_argument("--carry-from", type=Path,
                        help="the earlier results JSON whose figures the arms not built carry (default: --out)")
    parser.add_argument("--previous", type=Path,
                        help="the results JSON of the recipe this one replaces: its student's accuracy, MACs and "
                             "latency go in as `previous_default`, and the targets compare with them")


def previous_default(path: Path | None) -> dict | None:
    """The kd student of an earlier results JSON (the default recipe this one replaces), for the targets."""
    if path is None:
        return None
    earlier, source = _results(path)
    stages = {s["stage"]: s for s in earlier["runs"]["kd"][0]["stages"]}
    int8 = stages["int8"]
    return {"source": f"{source} (finished {earlier['machine']['date']}), seed "
                      f"{earlier['runs']['kd'][0]['seed']} for MACs, bytes and latency",
            "prune": earlier.get("prune_method") or f"magnitude (sparsity {stages['prune']['sparsity']})",
            "student_int8_accuracy": earlier["student_int8_accuracy"],
            "student_int8_accuracy_seeds": earlier["student_int8_accuracy_seeds"],
            "student_macs": int8["macs"], "student_tflite_bytes": int8["int8"]["tflite_bytes"],
            "student_latency_ms": int8["int8"]["latency_ms"],
            "kd_gain_over_baseline_points": earlier["kd_gain_over_baseline_points"],
            "baseline_int8_accuracy": earlier["baseline_int8_accuracy"],
            "baseline_int8_accuracy_seeds": earlier["baseline_int8_accuracy_seeds"]}


def _carried(path: Path, built: list[str], cfg, data_settings: dict | None = None) -> dict:
    """The figures of the arms not built, from an earlier results JSON, each with where it came from (none for an
    arm the recipe makes the kd arm itself). Exits when that JSON records `data_settings` (what the data set was
    made with) other than this run's: its arms were measured on other clips."""
    if "kd" not in built:
        sys.exit("--variants must include kd: every figure of the recipe comes from it")
    missing = [name for name in _variants(cfg, []) if name not in built]
    if not missing:
        return {}
    if "@" not in str(path) and not path.exists():
        sys.exit(f"--variants leaves out {', '.join(missing)} but {path} (--carry-from) does not exist")
    earlier, source = _results(path)
    if "data_settings" in earlier and earlier["data_settings"] != data_settings:
        sys.exit(f"--carry-from {source} measured {', '.join(missing)} on a set made with "
                 f"{earlier['data_settings']}, but this run's data was made with {data_settings}: build "
                 f"{', '.join(missing)} too (--variants), or carry from a run on this set")
    carried = {}
    for name in missing:
        keys = [f"{name}_int8_accuracy", f"{name}_int8_accuracy_seeds"] + \
            (["no_kd_float_accuracy_seeds"] if name == "no_kd" and "no_kd_float_accuracy_seeds" in earlier else [])
        carried[name] = {"figures": {key: earlier[key] for key in keys},
                         "runs": earlier.get("runs", {}).get(name, []),
                         "source": _first_source(earlier, name, source)}
    return carried


def _first_source(earlier: dict, name: str, source: str) -> str:
    """Where an arm's figures in `earlier` were measured: a figure that run carried itself keeps naming the run
    that measured it."""
    carried = earlier.get(f"{name}_source", "")
    if carried.startswith("carried from"):
        return carried
    return CARRY_NOTE[name].format(path=source, date=earlier["machine"]["date"])


def _results(path: Path) -> tuple[dict, str]:
    """A results JSON and how the JSON names it. `FILE@COMMIT` reads the file as that commit left it (for results
    this run will replace, such as the recipe before the one benchmarked)."""
    name, _, commit = str(path).partition("@")
    if not commit:
        return json.loads(path.read_text()), _source(path)
    relative = str(Path(name).resolve().relative_to(REPO))
    shown = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode:
        sys.exit(f"{path}: {shown.stderr.strip()}")
    return json.loads(shown.stdout), f"{relative} as of commit {commit}"


def _source(path: Path) -> str:
    """A results file as the JSON names it: its path in the repository and the commit that last changed it."""
    try:
        relative = str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", relative], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return f"{relative} as of commit {commit}" if commit else relative


def _variants(cfg, common: list[str]) -> dict[str, list[str]]:
    """The overrides of each arm: the recipe, baseline (a) and baseline (b), with `common` added to all three."""
    total_epochs = cfg.distill.epochs + (cfg.prune.epochs if cfg.prune else 0) + \
        (cfg.quantize.epochs if cfg.quantize else 0)
    arms = {
        "kd": common,
        "baseline": common + ["distill.alpha=0", f"distill.epochs={total_epochs}", "prune=none", "quantize=none"],
        "no_kd": common + ["distill.alpha=0"],
    }
    if cfg.distill.alpha == 0:  # the recipe trains on labels: its kd arm is the pipeline without KD (see _arm)
        del arms["no_kd"]
    return arms


def _write_result(result: dict, out: Path, script: str) -> None:
    """Add the machine and the command, write the JSON atomically and print it without the per-run detail."""
    result["machine"] = _machine()
    result["command"] = f"python {script} " + " ".join(sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}, indent=2))


def _build(recipe: Path, runs: Path, name: str, seed: int, overrides: list[str], smoke: bool = False,
           log_name: str | None = None) -> dict:
    """One `tinykd build` in a child process, timed; exits naming the log (`log_name`, default `name`, .log in
    `runs`) when the build fails."""
    command = [sys.executable, "-m", "tinykd", "build", str(recipe), "--runs", str(runs), "--quiet",
               "--set", f"name={name}", "--set", f"seed={seed}"] + (["--smoke"] if smoke else [])
    for override in overrides:
        command += ["--set", override]
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = runs / f"{log_name or name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        sys.exit(f"build {name} failed (exit {completed.returncode}); see {log}")
    report = json.loads((runs / (f"{name}-smoke" if smoke else name) / "report.json").read_text())
    print(f"  {seconds:.0f} s, int8 {report['int8']['tflm_accuracy']:.4f}", flush=True)
    return {"name": name, "seed": seed, "seconds": round(seconds, 1), "report": report, "log": completed.stdout}


def _first_build(kd: list[dict], log: Path | None) -> dict:
    """Seconds of a build that trained the teacher: this run's first, or an earlier one's log (stage lines)."""
    if "[teacher] training" in kd[0]["log"]:
        return {"build_seconds": kd[0]["seconds"], "build_seconds_source": "first kd build of this run"}
    if log is None:
        return {"build_seconds": None, "build_seconds_source": "teacher was cached; no --first-build-log given"}
    text = log.read_text()
    teacher = float(re.search(r"\[teacher\] done in ([0-9.]+) s", text).group(1))
    rebuilds = [r["seconds"] for r in kd]
    return {"build_seconds": round(teacher + statistics.median(rebuilds), 1),
            "build_seconds_source": f"teacher training measured in {log.name} ({teacher:.0f} s) plus the median "
                                    "build with a cached teacher in this run",
            "first_build_log_seconds_to_verify": float(re.findall(r"^\s*([0-9.]+)s \[verify\] done", text,
                                                                  re.MULTILINE)[-1])}


def _summary(runs: dict, noop: dict, cfg, first_build_log: Path | None, carried: dict | None = None) -> dict:
    carried = carried or {}
    kd = runs["kd"]
    first = kd[0]["report"]
    stages = {s["stage"]: s for s in first["stages"]}
    int8_seeds = [r["report"]["int8"]["tflm_accuracy"] for r in kd]
    # The float student that entered quantization: the pruned one, or the distilled one when prune is none.
    float_seeds = [_stage(r, "prune" if cfg.prune else "distill")["test_accuracy"] for r in kd]
    rebuilt = [r["seconds"] for r in kd if "[teacher] training" not in r["log"]]  # none with one seed
    result = {
        "recipe": cfg.name,
        "teacher_accuracy": stages["teacher"]["test_accuracy"],
        "student_float_accuracy": statistics.mean(_stage(r, "distill")["test_accuracy"] for r in kd),
        "student_float_accuracy_seeds": [_stage(r, "distill")["test_accuracy"] for r in kd],
        "student_float_into_quantization_accuracy_seeds": float_seeds,
        "student_int8_accuracy": statistics.mean(int8_seeds),
        "student_int8_accuracy_seeds": int8_seeds,
        **_arm("baseline", runs, carried),
        **_arm("no_kd", runs, carried),
        "teacher_tflite_bytes": stages["teacher"]["size_bytes"],
        "teacher_tflite_kind": stages["teacher"]["size_kind"],
        "student_tflite_bytes": first["int8"]["tflite_bytes"],
        "student_arena_bytes_host": first["int8"]["arena_bytes_host"],
        "student_params": stages["int8"]["params"],
        "student_sparsity": stages.get("prune", {}).get("sparsity"),
        "student_macs": stages["int8"]["macs"],
        "student_macs_seeds": [_stage(r, "int8")["macs"] for r in kd],
        "student_latency_ms": first["board"]["latency_ms"],
        "student_latency_ms_seeds": [r["report"]["board"]["latency_ms"] for r in kd],
        "student_latency_board": first["board"]["board"],
        "pruning_note": first["pruning_note"],
        "student_tflite_bytes_seeds": [r["report"]["int8"]["tflite_bytes"] for r in kd],
        "prune_method": cfg.prune.method if cfg.prune else None,
        "prune_budget": ({k: v for k, v in config.as_dict(cfg.prune.budget).items() if v is not None}
                         if cfg.prune and cfg.prune.budget else None),
        "tflm_tflite_top1_agreement": min(r["report"]["int8"]["tflm_tflite_top1_agreement"] for r in kd),
        "tflm_tflite_identical_fraction": min(r["report"]["int8"]["tflm_tflite_identical_fraction"] for r in kd),
        "tflm_tflite_max_lsb_diff": max(r["report"]["int8"]["tflm_tflite_max_lsb_diff"] for r in kd),
        **_first_build(kd, first_build_log),
        "rebuild_seconds": statistics.median(rebuilt) if rebuilt else None,
        "rebuild_seconds_runs": rebuilt,
        "noop_rebuild_seconds": noop["seconds"],
        "stage_seconds_first_build": first["seconds"],
        "runs": {**{name: [{"name": r["name"], "seed": r["seed"], "seconds": r["seconds"],
                            "int8_accuracy": r["report"]["int8"]["tflm_accuracy"],
                            "stages": r["report"]["stages"]} for r in group] for name, group in runs.items()},
                 **{name: arm["runs"] for name, arm in carried.items()}},
    }
    result["kd_gain_over_baseline_points"] = 100 * (result["student_int8_accuracy"] - result["baseline_int8_accuracy"])
    result["int8_minus_float_points"] = 100 * (statistics.mean(int8_seeds) - statistics.mean(float_seeds))
    result["targets"] = {
        "teacher_accuracy_at_least_0.92": result["teacher_accuracy"] >= 0.92,
        "student_tflite_at_most_32KiB": result["student_tflite_bytes"] <= 32 * 1024,
        "student_int8_at_least_97pct_of_teacher": result["student_int8_accuracy"] >= 0.97 * result["teacher_accuracy"],
        "kd_beats_baseline_by_0.5_points": result["kd_gain_over_baseline_points"] >= 0.5,
        "int8_within_0.5_points_of_float_student": abs(result["int8_minus_float_points"]) <= 0.5,
        "tflm_tflite_top1_agreement_100pct": result["tflm_tflite_top1_agreement"] == 1.0,
        "first_build_at_most_25_minutes": result["build_seconds"] is not None and result["build_seconds"] <= 25 * 60,
        "rebuild_at_most_8_minutes": result["rebuild_seconds"] is not None and result["rebuild_seconds"] <= 8 * 60,
    }
    return result


def _arm(name: str, runs: dict, carried: dict) -> dict:
    """The int8 accuracy (mean and seeds) of a baseline arm, built in this run or carried from an earlier one."""
    if name in carried:
        return {**carried[name]["figures"], f"{name}_source": carried[name]["source"]}
    if name in runs:
        built, source = runs[name], "built in this run"
    else:  # no_kd, which _variants leaves out of a recipe with distill.alpha 0: building it would repeat kd
        built, source = runs["kd"], "the kd arm: the recipe trains on labels (distill.alpha 0), so it is the " \
                                    "pipeline without KD"
    seeds = [r["report"]["int8"]["tflm_accuracy"] for r in built]
    return {f"{name}_int8_accuracy": statistics.mean(seeds), f"{name}_int8_accuracy_seeds": seeds,
            f"{name}_source": source}


def _stage(run: dict, name: str) -> dict:
    return next(s for s in run["report"]["stages"] if s["stage"] == name)


def _machine() -> dict:
    def versions():
        from importlib.metadata import version

        return {p: version(p) for p in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tflite-micro",
                                        "numpy")}

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_bytes": memory, "packages": versions(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


if __name__ == "__main__":
    main()
