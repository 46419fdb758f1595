"""What each compression technique really buys on a microcontroller: accuracy against bytes and latency.

    python bench/pareto.py                  (about half an hour on a 2-core machine with the teacher cached)
    python bench/pareto.py --teacher-cache bench/runs/kd_ablation/.teacher_cache    (reuse a trained teacher)

Every point is a real `tinykd build` of the Fashion-MNIST recipe (seed 0) with one change: narrower students
(width), magnitude pruning, structured (filter) pruning toward a MAC budget, clustering + TFLM LUT compression,
and structured pruning + LUT together. Points that share the distilled student share its run folder, so the
student is distilled once and only the later stages are redone. For each point: int8 accuracy in TFLite Micro,
`.tflite` bytes (compressed where compressed), MACs, estimated latency and flash on the recipe's board, arena plus
decompression memory. Writes bench/results/pareto.json and bench/results/pareto.png, and checks the targets of
the compression issue against the distilled student before any pruning (the `dense` point).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _build, _write_result  # noqa: E402

from tinykd import artifacts, config  # noqa: E402

STRUCTURED = "{method: structured, step_fraction: 0.15, max_steps: 8, epochs: 2, max_accuracy_drop: 0.02, "
REWIND = "rewind_epochs: 15, "  # fashion_mnist_compressed.yaml's: once within budget, retrain at the distill rate
POINTS = {  # name -> (run folder shared with, overrides)
    "dense": ("student", ["prune=none"]),
    "magnitude_30": ("student", []),  # the recipe's own pruning: zeros only
    "magnitude_60": ("student", ["prune.target_sparsity=0.6"]),
    "structured_mac60": ("student", ["prune=" + STRUCTURED + REWIND + "budget: {macs: MACS60}}"]),
    "structured_mac60_no_rewind": ("student", ["prune=" + STRUCTURED + "budget: {macs: MACS60}}"]),
    "structured_mac40": ("student", ["prune=" + STRUCTURED + REWIND + "budget: {macs: MACS40}}"]),
    "lut_16": ("student", ["prune=none", "cluster={clusters: 16}", "compress={}"]),
    "lut_8": ("student", ["prune=none", "cluster={clusters: 8}", "compress={}"]),
    "lut_4": ("student", ["prune=none", "cluster={clusters: 4}", "compress={}"]),
    "structured_mac60_lut_16": ("student", ["prune=" + STRUCTURED + REWIND + "budget: {macs: MACS60}}",
                                            "cluster={clusters: 16}", "compress={}"]),
    "width_0.75": ("width75", ["prune=none", "distill.student.width_multiplier=0.75"]),
    "width_0.5": ("width50", ["prune=none", "distill.student.width_multiplier=0.5"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "fashion_mnist.yaml")
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "pareto")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pareto.json")
    parser.add_argument("--teacher-cache", type=Path, help="a .teacher_cache folder holding the recipe's teacher")
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--smoke", action="store_true", help="every point in --smoke mode: checks the wiring")
    args = parser.parse_args()

    args.runs.mkdir(parents=True, exist_ok=True)
    cache = args.runs / ".teacher_cache"
    if args.teacher_cache and not cache.exists():
        shutil.copytree(args.teacher_cache, cache)
    cfg = config.load(args.recipe)
    points = {}
    dense_macs = None
    for name in ["dense"] + [p for p in args.points if p != "dense"]:
        folder, overrides = POINTS[name]
        if dense_macs is not None:
            overrides = [o.replace("MACS60", str(int(dense_macs * 0.6))).replace("MACS40", str(int(dense_macs * 0.4)))
                         for o in overrides]
        run = _build(args.recipe, args.runs, f"{cfg.name}-{folder}", 0, overrides, smoke=args.smoke)
        points[name] = _point(name, overrides, run)
        dense_macs = dense_macs or points["dense"]["macs"]
        result = {"recipe": cfg.name, "board": cfg.target.board, "smoke": args.smoke, "points": points,
                  "targets": _targets(points)}
        _write_result(result, args.out, "bench/pareto.py")
    _plot(points, args.out.with_suffix(".png"), cfg)


def _point(name: str, overrides: list[str], run: dict) -> dict:
    """One point: the shipped model's figures (LUT-compressed where compressed) and every stage's, from the build
    report's stage rows (`tinykd report` on the recipe's board; float stages post-training quantized)."""
    report = run["report"]
    compression = report.get("compression")
    pruned = next((s for s in report["stages"] if s["stage"] == "prune"), None)
    shipped = report["stages"][-1]["int8"]
    return {
        "settings": overrides,
        "int8_accuracy": report["int8"]["tflm_accuracy"],
        "tflite_bytes": shipped["tflite_bytes"],
        "tflite_bytes_uncompressed": report["int8"]["tflite_bytes"],
        "macs": report["stages"][-1]["macs"],
        "params": report["stages"][-1]["params"],
        "latency_ms": shipped["latency_ms"],
        "flash_bytes": shipped["flash_bytes"],
        "arena_bytes": shipped["arena_bytes"],  # includes the decompression memory of a compressed model
        "ram_bytes": shipped["ram_bytes"],
        "decompression_memory_bytes": compression["decompression_memory_bytes"] if compression else 0,
        "identical_outputs_after_compression": compression["identical_outputs"] if compression else None,
        "compressed_tensors": compression["compressed_tensors"] if compression else 0,
        "sparsity": pruned["sparsity"] if pruned else None,
        "stages": {stage["stage"]: stage["int8"] for stage in report["stages"] if stage.get("int8")},
        "pruning_note": report["pruning_note"],
        "seconds": run["seconds"],
    }


def _targets(points: dict) -> dict:
    """The compression issue's targets, against the distilled student before any pruning (`dense`)."""
    dense = points["dense"]
    targets = {}
    structured = points.get("structured_mac60")
    if structured:
        targets["structured_at_least_40pct_fewer_macs"] = structured["macs"] <= 0.6 * dense["macs"]
        targets["structured_tflite_at_least_30pct_smaller"] = structured["tflite_bytes"] <= 0.7 * dense["tflite_bytes"]
        targets["structured_within_0.5_points"] = dense["int8_accuracy"] - structured["int8_accuracy"] <= 0.005
    lut = points.get("lut_16")
    if lut:
        targets["lut_4bit_at_least_30pct_smaller_than_same_model_uncompressed"] = \
            lut["tflite_bytes"] <= 0.7 * lut["tflite_bytes_uncompressed"]
        targets["lut_identical_outputs"] = bool(lut["identical_outputs_after_compression"])
    return targets


def _plot(points: dict, path: Path, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, key, label in ((axes[0], "tflite_bytes", ".tflite bytes (compressed where compressed)"),
                             (axes[1], "latency_ms", f"estimated latency on {cfg.target.board} (ms)")):
        for name, point in points.items():
            axis.scatter(point[key], 100 * point["int8_accuracy"], s=30)
            axis.annotate(name, (point[key], 100 * point["int8_accuracy"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("int8 test accuracy in TFLite Micro (%)")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{cfg.name}: what each technique buys (seed 0)")
    figure.tight_layout()
    artifacts.save_figure(figure, path)


if __name__ == "__main__":
    main()
