"""Benchmark keyword spotting on a stream, as a device listens: false rejects and false accepts per hour.

    python bench/kws_stream.py [--runs DIR]      (about 20 minutes on a 2-core machine with the model built)

Runs, through the real `tinykd` commands and modules:
- `tinykd build pipelines/kws_dscnn.yaml` (reused when the runs folder already holds it; ~10 min otherwise), which
  synthesizes the keyword data set with seed 0 if it is missing;
- `tinykd data stream` twice: a validation stream spoken by the data set's validation speakers and a test stream
  spoken by its test speakers (neither heard in training), each with keywords, other words, noise bursts and
  silence at known times;
- on each stream: the front-end's int8 features of the last second every `stream.stride_ms`, the int8 model in
  the TFLite Micro interpreter, the recipe's recognizer (tinykd.audio.stream) at every threshold.
The threshold is chosen on the validation stream only (the lowest whose false accepts per hour are at most the
target) and then applied once to the test stream. Writes bench/results/kws_stream.json and kws_stream.png (the
DET curve: false reject rate against false accepts per hour, over thresholds). The chosen points also say which
words the errors were: each false accept as "heard -> detected" ("lift -> left") and each missed keyword.

`--settings-search` also tries the recognizer's other settings (`SETTINGS_GRID`: averaging window, results
required in it, suppression) on the model's scores, which they do not change: each is judged on the validation
stream at its own chosen threshold, and only the best is applied to the test stream (`settings_search` in the
JSON). The headline figures stay those of the recipe's `stream` section.

`--teacher` judges the build's teacher instead of its student, post-training quantized to int8 on the recipe's
representative samples (`teacher/teacher_int8.tflite` in the run): whether a stream miss is the student's
capacity or what the data teaches any model. Write it to another `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _write_result  # noqa: E402

from tinykd import config  # noqa: E402

TARGET_FALSE_REJECT_RATE = 0.10
TARGET_FALSE_ACCEPTS_PER_HOUR = 5.0
# The recognizer settings `--settings-search` compares; micro_speech's RecognizeCommands uses a 1000 ms window, 3
# results and 1500 ms suppression.
SETTINGS_GRID = {"average_window_ms": (500, 750, 1000), "min_count": (3, 5), "suppression_ms": (1000, 1500)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "kws_dscnn.yaml")
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "kws_stream")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kws_stream.json")
    parser.add_argument("--test-minutes", type=float, default=60.0)
    parser.add_argument("--val-minutes", type=float, default=30.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for the build, as `tinykd build --set` (repeatable)")
    parser.add_argument("--settings-search", action="store_true",
                        help="also choose the recognizer's settings (SETTINGS_GRID) on the validation stream")
    parser.add_argument("--teacher", action="store_true",
                        help="judge the build's teacher, post-training quantized to int8, instead of its student")
    args = parser.parse_args()

    cfg = config.load(args.recipe, config.parse_overrides(args.overrides))
    run = args.runs / cfg.name
    if args.teacher and (run / "teacher" / "teacher.keras").is_file():
        model = _teacher_int8(run, cfg, args.recipe.parent)  # the teacher is all it needs: no rebuild
    else:
        model = _build(args.recipe, args.runs, args.overrides, cfg)
        if args.teacher:
            model = _teacher_int8(run, cfg, args.recipe.parent)
    streams = {split: _stream(args.runs / "streams", split, minutes, cfg)
               for split, minutes in (("val", args.val_minutes), ("test", args.test_minutes))}
    heard, curves, seconds = {}, {}, {}
    for split, path in streams.items():
        started = time.perf_counter()
        heard[split] = _heard(model, path, cfg)
        curves[split] = _curve(heard[split], cfg, cfg.stream)
        seconds[split] = round(time.perf_counter() - started, 1)
        print(f"  {split}: {seconds[split]:.0f} s", flush=True)

    chosen = _choose(curves["val"])
    test = next(point for point in curves["test"] if point["threshold"] == chosen["threshold"])
    recipe_point = _nearest(curves["test"], cfg.stream.threshold)
    result = {
        "recipe": cfg.name,
        "overrides": args.overrides,
        "model": str(model.relative_to(args.runs)) if model.is_relative_to(args.runs) else str(model),
        "stream_settings": config.plain(cfg.stream.__dict__),
        "threshold_rule": f"the lowest threshold whose validation-stream false accepts per hour are at most "
                          f"{TARGET_FALSE_ACCEPTS_PER_HOUR:g}; chosen on the validation stream, applied once to test",
        "threshold": chosen["threshold"],
        "stream_false_reject_rate": test["false_reject_rate"],
        "stream_false_accepts_per_hour": test["false_accepts_per_hour"],
        "stream_test": test,
        "stream_validation_at_threshold": chosen,
        "stream_test_at_recipe_threshold": recipe_point,
        "streams": {split: _composition(path) for split, path in streams.items()},
        "evaluation_seconds": seconds,
        "det_curve": {split: [_without_words(point) for point in curve] for split, curve in curves.items()},
        **({"settings_search": _settings_search(heard, cfg)} if args.settings_search else {}),
        "targets": {"false_reject_rate_at_most_10pct_with_at_most_5_false_accepts_per_hour":
                    test["false_reject_rate"] <= TARGET_FALSE_REJECT_RATE
                    and test["false_accepts_per_hour"] <= TARGET_FALSE_ACCEPTS_PER_HOUR},
    }
    _plot(curves, chosen, args.out.with_suffix(".png"))
    _write_result(result, args.out, "bench/kws_stream.py")


def _build(recipe: Path, runs: Path, overrides: list[str], cfg) -> Path:
    """The recipe's int8 model, built (or found cached) with `tinykd build`."""
    command = [sys.executable, "-m", "tinykd", "build", str(recipe), "--runs", str(runs), "--quiet"]
    for override in overrides:
        command += ["--set", override]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    run = runs / cfg.name
    return run / "compress" / "model.tflite" if cfg.compress is not None else run / "convert" / "model.tflite"


def _teacher_int8(run: Path, cfg, recipe_folder: Path) -> Path:
    """The build's teacher as a full-int8 .tflite, calibrated as the pipeline calibrates its student (made once)."""
    path = run / "teacher" / "teacher_int8.tflite"
    if not path.is_file():
        from tinykd import artifacts, convert
        from tinykd import data as data_layer
        from tinykd.models import load_model

        print(f"  post-training quantizing {run / 'teacher' / 'teacher.keras'}", flush=True)
        data = data_layer.load(cfg.data, cfg.data.seed, (recipe_folder,), frontend=cfg.frontend)
        teacher = load_model(run / "teacher" / "teacher.keras")
        artifacts.write_bytes(path, convert.int8_model(teacher, data, cfg, cfg.convert.representative_samples))
    return path


def _stream(folder: Path, split: str, minutes: float, cfg) -> Path:
    """`tinykd data stream` for the data set's held-out `split` speakers, unless it was made before."""
    held_out = cfg.data.held_out_speakers  # a stream made for the other split of speakers is not reused
    suffix = "" if held_out == "random" else f"_{held_out}"
    path = folder / f"{split}_{minutes:g}min_seed{cfg.data.seed}{suffix}.wav"
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        command = [sys.executable, "-m", "tinykd", "data", "stream", str(path), "--split", split,
                   "--minutes", f"{minutes:g}", "--seed", str(cfg.data.seed), "--held-out", held_out]
        print("$", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    return path


def _heard(model: Path, path: Path, cfg):
    """The stream, and the int8 model's probabilities in TFLM on its windows with their end times."""
    from tinykd.audio import stream_eval
    from tinykd.data.keyword_stream import read_stream
    stream = read_stream(path)
    return stream, *stream_eval.heard(model.read_bytes(), stream, cfg.frontend, cfg.stream.stride_ms)


def _curve(heard, cfg, settings) -> list[dict]:
    """The DET curve of the recognizer with `settings` over the probabilities `heard` on one stream."""
    from tinykd.audio import stream as recognizer
    from tinykd.audio import stream_eval
    from tinykd.data import keywords
    from tinykd.data.speech_commands import SILENCE, UNKNOWN
    stream, probabilities, ends_ms = heard
    labels = (SILENCE, UNKNOWN, *cfg.data.keywords)
    voices = {speaker.id: speaker.name for speaker in keywords.choose_speakers(keywords.POOL, stream.seed)}
    smoothed = recognizer.smooth(probabilities, ends_ms, settings)
    outcomes = stream_eval.sweep(smoothed, stream, labels, settings,
                                 tolerance_ms=cfg.frontend.clip_ms + settings.average_window_ms)
    return [{"threshold": round(o.threshold, 6), "false_reject_rate": round(o.false_reject_rate, 4),
             "false_accepts_per_hour": round(o.false_accepts_per_hour, 2), "false_rejects": o.false_rejects,
             "keywords": o.keywords, "false_accepts": o.false_accepts,
             "false_accepts_by_kind": dict(o.false_accepts_by_kind),
             "false_accepts_by_word": dict(o.false_accepts_by_word),
             "false_rejects_by_word": dict(o.false_rejects_by_word),
             "false_rejects_by_voice": {voices.get(speaker, speaker): [missed, said]
                                        for speaker, missed, said in o.false_rejects_by_speaker}}
            for o in outcomes]


def _settings_search(heard: dict, cfg) -> dict:
    """Every SETTINGS_GRID setting judged on the validation stream at its chosen threshold; the best (fewest false
    rejects among those meeting the false-accept target there, then fewest false accepts) applied once to test."""
    tried = []
    for values in itertools.product(*SETTINGS_GRID.values()):
        chosen = dict(zip(SETTINGS_GRID, values))
        if chosen["min_count"] > chosen["average_window_ms"] // cfg.stream.stride_ms + 1:
            continue  # more results than the window holds at this stride (StreamConfig.capacity)
        settings = dataclasses.replace(cfg.stream, **chosen)
        point = _choose(_curve(heard["val"], cfg, settings))
        tried.append({"settings": config.plain(settings.__dict__), "validation": _without_words(point)})
        print(f"  {chosen}: validation {100 * point['false_reject_rate']:.1f}% false "
              f"rejects at {point['false_accepts_per_hour']:g}/h (threshold {point['threshold']:.3f})", flush=True)
    meeting = [t for t in tried if t["validation"]["false_accepts_per_hour"] <= TARGET_FALSE_ACCEPTS_PER_HOUR] or tried
    best = min(meeting, key=lambda t: (t["validation"]["false_reject_rate"], t["validation"]["false_accepts_per_hour"]))
    settings = dataclasses.replace(cfg.stream, **{k: best["settings"][k] for k in SETTINGS_GRID})
    test = next(p for p in _curve(heard["test"], cfg, settings) if p["threshold"] == best["validation"]["threshold"])
    return {"grid": {k: list(v) for k, v in SETTINGS_GRID.items()},
            "rule": "each setting at its own validation threshold (as the headline); the fewest validation false "
                    "rejects among settings meeting the false-accept target there; applied once to test",
            "tried": tried, "best_settings": best["settings"], "best_validation": best["validation"],
            "best_test": test}


def _without_words(point: dict) -> dict:
    """A curve point without its per-word and per-voice errors, which only the chosen points keep (the curve has 255
    points)."""
    return {k: v for k, v in point.items()
            if k not in ("false_accepts_by_word", "false_rejects_by_word", "false_rejects_by_voice")}


def _choose(curve: list[dict]) -> dict:
    passing = [point for point in curve if point["false_accepts_per_hour"] <= TARGET_FALSE_ACCEPTS_PER_HOUR]
    return min(passing, key=lambda point: point["threshold"]) if passing else curve[-1]


def _nearest(curve: list[dict], threshold: float) -> dict:
    return min(curve, key=lambda point: (abs(point["threshold"] - threshold), -point["threshold"]))


def _composition(path: Path) -> dict:
    import json

    labels = json.loads(path.with_suffix(".json").read_text())
    return {"file": path.name, "split": labels["split"], "seed": labels["seed"], **labels["composition"]}


def _plot(curves: dict, chosen: dict, path: Path) -> None:
    from matplotlib import pyplot

    from tinykd import artifacts

    figure, axes = pyplot.subplots(figsize=(6, 4.5))
    for split, curve in curves.items():
        axes.plot([p["false_accepts_per_hour"] for p in curve], [100 * p["false_reject_rate"] for p in curve],
                  marker=".", markersize=3, label=f"{split} stream")
    test = next(p for p in curves["test"] if p["threshold"] == chosen["threshold"])
    axes.plot([test["false_accepts_per_hour"]], [100 * test["false_reject_rate"]], "k*", markersize=12,
              label=f"test at threshold {chosen['threshold']:.3f} (chosen on val)")
    axes.axvline(TARGET_FALSE_ACCEPTS_PER_HOUR, color="grey", linestyle=":")
    axes.axhline(100 * TARGET_FALSE_REJECT_RATE, color="grey", linestyle=":")
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlim(left=0)
    axes.set_xlabel("false accepts per hour")
    axes.set_ylabel("false reject rate (%)")
    axes.set_title("Keyword spotting on a stream (int8 model in TFLite Micro)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    artifacts.save_figure(figure, path)


if __name__ == "__main__":
    main()
