"""Which distillation method helps a tiny student most: every method against logits-only and no distillation.

    python bench/kd_ablation.py                        (hours on a 2-core machine; resumable)
    python bench/kd_ablation.py --recipes fashion_mnist --methods logits none attention

Each arm is a real `tinykd build` of the recipe's student (same architecture for every arm) with the same
reduced epoch budget (REDUCED below; born-again splits it between its two rounds), 3 seeds each, with pruning
and QAT as in the recipe. Semi-supervised arms keep `labeled_samples` labels and make the rest of the training
split unlabelled; their teacher learns from those labels only, as a real team's would.
Writes bench/results/kd_ablation.json after every build (per method: int8 accuracy in TFLM, mean and standard
deviation over the seeds, training seconds of distill + prune + quantize; extra teachers' training separately)
and bench/results/kd_ablation.png, a bar chart. A finished build is reused when the script is run again.

Decision rule of the issue: a default recipe switches from logits-only to a method only if the method's mean beats
logits-only by more than one standard deviation (the larger of the two arms') within 1.5x its training time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _build, _write_result  # noqa: E402

from tinykd import artifacts, config  # noqa: E402

# The reduced budget every arm of a recipe gets (distill, prune and quantize epochs).
REDUCED = {
    "fashion_mnist": {"distill.epochs": 6, "prune.epochs": 1, "quantize.epochs": 1},
    "kws_dscnn": {"distill.epochs": 16, "prune.epochs": 2, "quantize.epochs": 2},
}
# Layer pairs on each recipe's teacher and student, matched by resolution and depth.
PAIRS = {
    "fashion_mnist": {  # teacher cnn [32, 64, 128] and student cnn [16, 32, 48]: 28, 14 and 7 pixel maps
        "hints": "[{teacher_layer: block2_conv1_relu, student_layer: block2_conv1_relu}]",
        "attention": "[{teacher_layer: block2_conv1_relu, student_layer: block2_conv1_relu}, "
                     "{teacher_layer: block3_conv1_relu, student_layer: block3_conv1_relu}]",
    },
    "kws_dscnn": {  # teacher DS-CNN of 5 blocks, student of 4, all at 25 x 20 after the strided first conv
        "hints": "[{teacher_layer: block3_conv1_relu, student_layer: block2_conv1_relu}]",
        "attention": "[{teacher_layer: block3_conv1_relu, student_layer: block2_conv1_relu}, "
                     "{teacher_layer: block5_conv1_relu, student_layer: block4_conv1_relu}]",
    },
}
LABELED_SAMPLES = {"fashion_mnist": 5000, "kws_dscnn": 1000}
METHODS = ("logits", "none", "hints", "attention", "ensemble", "born_again", "semi_none", "semi_logits",
           "semi_unlabeled")


def arms(recipe: str, cfg, labeled_samples: int) -> dict[str, list[str]]:
    """The `--set` overrides of every method on top of the recipe and the reduced budget."""
    budget = REDUCED[recipe]
    # A second teacher: the recipe's own, trained from another seed.
    extra_teacher = yaml.safe_dump([{"model": config.as_dict(cfg.teacher.model), "epochs": cfg.teacher.epochs,
                                     "batch_size": cfg.teacher.batch_size,
                                     "learning_rate": cfg.teacher.learning_rate, "seed": 1}],
                                   default_flow_style=True, width=10_000).strip()
    semi = [f"data.labeled_samples={labeled_samples}"]
    return {
        "logits": [],
        "none": ["distill.alpha=0"],
        "hints": [f"distill.hints={PAIRS[recipe]['hints']}"],
        "attention": [f"distill.attention={PAIRS[recipe]['attention']}"],
        "ensemble": [f"distill.ensemble={extra_teacher}"],
        "born_again": ["distill.rounds=2", f"distill.epochs={budget['distill.epochs'] // 2}"],
        "semi_none": semi + ["distill.alpha=0"],
        "semi_logits": semi,
        "semi_unlabeled": semi + ["data.unlabeled=rest"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["fashion_mnist", "kws_dscnn"], choices=sorted(REDUCED))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "kd_ablation")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kd_ablation.json")
    parser.add_argument("--smoke", action="store_true", help="every arm in --smoke mode, one seed: checks the wiring")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.smoke else args.seeds
    result = {"budget": REDUCED, "pairs": PAIRS, "labeled_samples": LABELED_SAMPLES, "seeds": seeds,
              "smoke": args.smoke, "recipes": {}}
    for recipe in args.recipes:
        path = REPO / "pipelines" / f"{recipe}.yaml"
        cfg = config.load(path)
        budget = [f"{k}={v}" for k, v in REDUCED[recipe].items()]
        methods = {}
        result["recipes"][recipe] = methods
        labeled = 200 if args.smoke else LABELED_SAMPLES[recipe]  # smoke builds keep 1,024 training samples
        for method, overrides in arms(recipe, cfg, labeled).items():
            if method not in args.methods:
                continue
            runs = []
            for seed in seeds:
                # born_again's own distill.epochs comes after the budget, so it wins.
                run = _build(path, args.runs, f"{recipe}-{method}-s{seed}", seed, budget + overrides,
                             smoke=args.smoke)
                runs.append(run)
                methods[method] = _method_summary(method, runs, overrides)
                result["decision"] = {name: _decision(arms_) for name, arms_ in result["recipes"].items()}
                _write_result(result, args.out, "bench/kd_ablation.py")
        _plot(result, args.out.with_suffix(".png"))


def _method_summary(method: str, runs: list[dict], overrides: list[str]) -> dict:
    accuracies = [r["report"]["int8"]["tflm_accuracy"] for r in runs]
    training = [sum(r["report"]["seconds"].get(stage, 0.0) for stage in ("distill", "prune", "quantize"))
                for r in runs]
    ensemble = runs[0]["report"].get("ensemble")
    return {
        "overrides": overrides,
        "int8_accuracy_mean": statistics.mean(accuracies),
        "int8_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "int8_accuracy_seeds": accuracies,
        "training_seconds_mean": statistics.mean(training),
        "training_seconds_seeds": [round(t, 1) for t in training],
        "extra_teachers_training_seconds": ensemble["extra_teachers_training_seconds"] if ensemble else 0.0,
        "teacher_accuracy": next(s["test_accuracy"] for s in runs[0]["report"]["stages"] if s["stage"] == "teacher"),
        "ensemble_accuracy": ensemble["test_accuracy"] if ensemble else None,
        "labelled_train_samples": runs[0]["report"]["data"]["train"],
        "tflite_bytes": runs[0]["report"]["int8"]["tflite_bytes"],
    }


def _decision(methods: dict) -> dict:
    """Each method against logits-only (and semi_unlabeled against semi_logits): does it earn the default?"""
    verdicts = {}
    for method, summary in methods.items():
        reference = "semi_logits" if method == "semi_unlabeled" else "logits"
        if method in ("logits", "none", "semi_none", "semi_logits") or reference not in methods:
            continue
        base = methods[reference]
        margin = max(summary["int8_accuracy_std"], base["int8_accuracy_std"])
        gain = summary["int8_accuracy_mean"] - base["int8_accuracy_mean"]
        time_ratio = summary["training_seconds_mean"] / base["training_seconds_mean"]
        verdicts[method] = {"against": reference, "gain_points": round(100 * gain, 2),
                            "one_std_points": round(100 * margin, 2), "time_ratio": round(time_ratio, 2),
                            # One seed has no spread to beat: no verdict rather than a false one.
                            "switch_default": None if len(summary["int8_accuracy_seeds"]) < 2
                            else bool(gain > margin and time_ratio <= 1.5)}
    return verdicts


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = [r for r, methods in result["recipes"].items() if methods]
    figure, axes = plt.subplots(1, len(recipes), figsize=(6 * len(recipes), 4.5), squeeze=False)
    for axis, recipe in zip(axes[0], recipes):
        methods = result["recipes"][recipe]
        names = list(methods)
        means = [100 * methods[m]["int8_accuracy_mean"] for m in names]
        stds = [100 * methods[m]["int8_accuracy_std"] for m in names]
        colours = ["tab:orange" if m.startswith("semi") else "tab:blue" for m in names]
        axis.bar(names, means, yerr=stds, capsize=4, color=colours)
        low = min(m - s for m, s in zip(means, stds))
        axis.set_ylim(max(0.0, low - 2.0), min(100.0, max(means) + 1.5))
        axis.set_title(f"{recipe}: int8 student in TFLite Micro ({len(result['seeds'])} seeds)")
        axis.set_ylabel("test accuracy (%)")
        axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    artifacts.save_figure(figure, path)


if __name__ == "__main__":
    main()
