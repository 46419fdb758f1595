"""Benchmark the keyword-spotting recipe: synthesized data, distilled DS-CNN, against the same student without KD.

    python bench/kws.py            (about half an hour on a 2-core machine)

Runs, each through the real `tinykd` commands:
- `tinykd data keywords` into an empty folder (timed: `synthesis_seconds`);
- the recipe with 3 student seeds; the first build trains the teacher (`build_seconds`), the others reuse it;
- baseline (a): same student, labels only, no pruning, post-training quantization, the same total epochs;
- baseline (b): the same pipeline with distillation off (alpha 0), 3 seeds: "the same student without KD" (a
  recipe at alpha 0 is that pipeline: its kd builds give both figures and nothing is built twice).
Writes bench/results/kws.json with the same keys as the Fashion-MNIST benchmark plus the front-end parity, the
false reject and false accept rates, and every target of the keyword-spotting issue checked. --variants,
--carry-from and --previous work as in bench/fashion_mnist.py; a baseline carried from a run on a set made with other
settings (its synthesis.json, kept as `data_settings`) is refused. `--set KEY=VALUE` changes the recipe for every
build and for the data synthesized for them (`--set data.held_out_speakers=matched`), kept as `overrides`.

A full run builds 6-7 times; on a slow machine that is longer than a working session. `--baseline-only` builds the
hand baseline alone (with `--keep-runs`, resuming builds an interrupted run left) into its own JSON, and a later
`--variants kd --carry-from THAT.json` on the same data builds the rest.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _build, _carried, _stage, _summary, _variants, _write_result, \
    add_variant_options, previous_default  # noqa: E402

from tinykd import config  # noqa: E402
from tinykd.data import keywords  # noqa: E402
from tinykd.errors import ConfigError, DataError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "pipelines" / "kws_dscnn.yaml")
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "kws",
                        help="the builds go here; emptied first, so every figure is timed from scratch")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kws.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, help="use this keyword data set instead of synthesizing one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key in every build and in the data synthesized for them, as `tinykd "
                             "build --set` does (e.g. data.held_out_speakers=matched); kept as `overrides`")
    add_variant_options(parser)
    parser.add_argument("--synthesis-seconds", type=float,
                        help="with --data: the seconds `tinykd data keywords` took to make it (it prints them), "
                             "counted in synthesis_plus_build_seconds as if the benchmark had synthesized it")
    parser.add_argument("--stream-results", type=Path, nargs="+",
                        help="only add the stream figures of these bench/kws_stream.py JSONs (one per kd seed of this "
                             "benchmark) to --out, building nothing; with --previous, also compare with that default")
    parser.add_argument("--stream-note", metavar="TEXT",
                        help="with --stream-results: a sentence on what the figures replace (kept as stream_note)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="build only the hand baseline and write its figures to --out, for --carry-from of a "
                             "later run on the same data (a full run is longer than some sessions on slow machines)")
    parser.add_argument("--keep-runs", action="store_true",
                        help="with --baseline-only: do not empty --runs; builds finished there are resumed, and "
                             "their seconds are the stage times their reports recorded")
    args = parser.parse_args()
    if args.keep_runs and not args.baseline_only:
        sys.exit("--keep-runs applies only with --baseline-only: a full run empties --runs so every figure is timed "
                 "from scratch")
    if args.synthesis_seconds is not None and args.data is None and not args.stream_results:
        sys.exit("--synthesis-seconds applies only with --data (without it the benchmark times the synthesis itself)")
    if args.stream_results:
        _add_stream(args.out, args.stream_results, previous_default(args.previous), args.synthesis_seconds,
                    args.stream_note)
        return

    try:  # before --runs is emptied: a mistyped --set or the wrong --data loses nothing
        settings = config.parse_overrides(args.overrides)
        owned = [key for key in settings if key in ("name", "seed")]
        if owned:
            sys.exit(f"--set {owned[0]}={settings[owned[0]]}: the benchmark names each build and sets its seed; "
                     "use --seeds for the seeds")
        cfg = config.load(args.recipe, settings)
        if args.data is not None:
            keywords.check_made_with(args.data, cfg.data.extra_train_speakers, cfg.data.held_out_speakers,
                                     cfg.data.flite_clip_factor, cfg.data.train_stream_minutes, cfg.data.word_clips)
    except (ConfigError, DataError) as error:
        sys.exit(str(error))
    if args.data is not None and args.data.resolve().is_relative_to(args.runs.resolve()):
        sys.exit(f"--data {args.data} is inside --runs {args.runs}, which the benchmark empties before it builds: "
                 "move the data set out of it, or leave out --data to synthesize one")
    if args.runs.exists() and not args.keep_runs:
        shutil.rmtree(args.runs)
    args.runs.mkdir(parents=True, exist_ok=True)
    synthesis_seconds = args.synthesis_seconds
    data = args.data
    if data is None:  # the set the recipe's build would synthesize
        data = args.runs / "data"
        command = [sys.executable, "-m", "tinykd", "data", "keywords", str(data),
                   "--extra-train-speakers", str(cfg.data.extra_train_speakers),
                   "--held-out", cfg.data.held_out_speakers, "--flite-clip-factor", str(cfg.data.flite_clip_factor),
                   "--train-stream-minutes", str(cfg.data.train_stream_minutes)]
        command += [f"--train-word-clips={pair}" for pair in cfg.data.train_word_clips]
        print("$", " ".join(command[2:]), flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True)
        synthesis_seconds = round(time.perf_counter() - started, 1)
        print(f"  {synthesis_seconds:.0f} s", flush=True)

    common = args.overrides + [f"data.path={data.resolve()}", "data.synthesize=false"]
    if args.baseline_only:
        _baseline_only(args, cfg, common, data)
        return
    data_settings = keywords.made_with_settings(data)
    carried = _carried(args.carry_from or args.out, args.variants, cfg, data_settings)
    previous = previous_default(args.previous)  # read now: --previous may be --out, rewritten at the end
    runs = {name: [_build(args.recipe, args.runs, f"{cfg.name}-{name}-s{seed}", seed, overrides)
                   for seed in args.seeds]
            for name, overrides in _variants(cfg, common).items() if name in args.variants}
    noop = _build(args.recipe, args.runs, f"{cfg.name}-kd-s{args.seeds[0]}", args.seeds[0], common,
                  log_name=f"{cfg.name}-kd-s{args.seeds[0]}-noop")  # keeps the first build's log

    result = _summary(runs, noop, cfg, None, carried)
    kd = runs["kd"]
    result["distill_alpha"] = cfg.distill.alpha  # 0: the recipe trains on labels (chosen by bench/kws_alpha.py)
    result["no_kd_gain_points"] = 100 * (result["student_int8_accuracy"] - result["no_kd_int8_accuracy"])
    result["frontend_parity"] = [r["report"]["frontend_parity"] for r in kd]
    result["false_reject_rate_seeds"] = [r["report"]["classes"]["false_reject_rate"] for r in kd]
    result["false_accept_rate_seeds"] = [r["report"]["classes"]["false_accept_rate"] for r in kd]
    if "no_kd" not in carried:  # built, or the kd arm itself when the recipe's alpha is 0
        result["no_kd_float_accuracy_seeds"] = [_stage(r, "distill")["test_accuracy"] for r in runs.get("no_kd", kd)]
    result["test_clips"] = kd[0]["report"]["data"]["test"]
    result["data_settings"] = data_settings
    result["overrides"] = args.overrides
    result["targets"] = {
        "student_int8_at_least_97pct_of_teacher": result["student_int8_accuracy"] >= 0.97 * result["teacher_accuracy"],
        "student_tflite_at_most_30KB": result["student_tflite_bytes"] <= 30 * 1000,
        "kd_beats_no_kd_by_0.5_points": result["no_kd_gain_points"] >= 0.5 if "no_kd" not in carried else None,
        "kd_beats_baseline_by_0.5_points": result["kd_gain_over_baseline_points"] >= 0.5,
        "synthesis_plus_build_under_25_minutes": None,  # _synthesis
        "features_identical_on_every_test_clip": all(p["identical_clips"] == p["test_clips"]
                                                     for p in result["frontend_parity"]),
        "tflm_tflite_top1_agreement_100pct": result["tflm_tflite_top1_agreement"] == 1.0,
    }
    _synthesis(result, synthesis_seconds)
    _compare_with_previous(result, previous)
    _write_result(result, args.out, "bench/kws.py")


def _baseline_only(args, cfg, common: list[str], data: Path) -> None:
    """Build the hand baseline alone (resuming builds --keep-runs left) and write what --carry-from reads."""
    overrides = _variants(cfg, common)["baseline"]
    runs = [_build(args.recipe, args.runs, f"{cfg.name}-baseline-s{seed}", seed, overrides) for seed in args.seeds]
    for run in runs:
        if "[distill] unchanged" in run["log"]:  # resumed: the process only read what an earlier one trained
            run["seconds"], run["resumed"] = round(sum(run["report"]["seconds"].values()), 1), True
    seeds = [r["report"]["int8"]["tflm_accuracy"] for r in runs]
    _write_result({
        "recipe": cfg.name,
        "data": str(data),
        "data_settings": keywords.made_with_settings(data),
        "overrides": args.overrides,
        "teacher_accuracy": _stage(runs[0], "teacher")["test_accuracy"],
        "baseline_int8_accuracy": statistics.mean(seeds),
        "baseline_int8_accuracy_seeds": seeds,
        "baseline_source": "built in this run (--baseline-only)",
        "test_clips": runs[0]["report"]["data"]["test"],
        "runs": {"baseline": [{"name": r["name"], "seed": r["seed"], "seconds": r["seconds"],
                               "resumed": r.get("resumed", False), "int8_accuracy": r["report"]["int8"]["tflm_accuracy"],
                               "stages": r["report"]["stages"]} for r in runs]},
    }, args.out, "bench/kws.py")


def _synthesis(result: dict, seconds: float | None) -> None:
    """The data synthesis time, and with the first build's the target on both."""
    result["synthesis_seconds"] = seconds
    result["synthesis_plus_build_seconds"] = (None if seconds is None or result["build_seconds"] is None
                                              else round(seconds + result["build_seconds"], 1))
    result["targets"]["synthesis_plus_build_under_25_minutes"] = (result["synthesis_plus_build_seconds"] is not None
                                                                  and result["synthesis_plus_build_seconds"] < 25 * 60)


def _compare_with_previous(result: dict, previous: dict | None) -> None:
    """The default this recipe replaces, and the target measured against it."""
    if previous is not None:
        result["previous_default"] = previous
        result["targets"]["latency_below_previous_default"] = \
            result["student_latency_ms"] < previous["student_latency_ms"]


def _add_stream(out: Path, stream_results: list[Path], previous: dict | None, synthesis_seconds: float | None,
                note: str | None) -> None:
    """Put the false rejects and false accepts per hour of stream benchmarks (one per seed's kd build) into the
    results file: their means, and each seed's figure; and, when given, the default it replaces, the time the
    synthesis of its --data took and a note on the figures. The command is kept in `amended_by`."""
    result = json.loads(out.read_text())
    _compare_with_previous(result, previous)
    if synthesis_seconds is not None:
        _synthesis(result, synthesis_seconds)
    result.setdefault("amended_by", []).append("python bench/kws.py " + shlex.join(sys.argv[1:]))
    streams = sorted((json.loads(path.read_text()) for path in stream_results), key=_stream_seed)
    seeds = [_stream_seed(stream) for stream in streams]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"--stream-results: more than one file for a seed ({seeds}); give one per seed")
    first = streams[0]
    test, val = first["streams"]["test"], first["streams"]["val"]
    frr = [stream["stream_false_reject_rate"] for stream in streams]
    fa = [stream["stream_false_accepts_per_hour"] for stream in streams]
    result.update({
        "stream_false_reject_rate": statistics.mean(frr),
        "stream_false_accepts_per_hour": statistics.mean(fa),
        "stream_seeds": seeds,
        "stream_false_reject_rate_seeds": frr,
        "stream_false_accepts_per_hour_seeds": fa,
        "stream_threshold_seeds": [stream["threshold"] for stream in streams],
        "stream_settings": first["stream_settings"],
        "stream_source": f"bench/kws_stream.py on the kd builds of seeds {', '.join(map(str, seeds))} of this "
                         f"benchmark (`{first['command']}`, then the same with each seed), finished "
                         f"{streams[-1]['machine']['date']}: a {test['duration_ms'] / 60000:g}-minute test stream "
                         f"of {test['speakers']} held-out speakers ({test['keyword_events']} keywords), each seed's "
                         f"threshold chosen on a {val['duration_ms'] / 60000:g}-minute validation stream",
    })
    result.pop("stream_threshold", None)
    result.pop("stream_note", None)
    if note:
        result["stream_note"] = note
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(out)


def _stream_seed(stream: dict) -> int:
    """The kd seed a bench/kws_stream.py run was built with (its `--set seed=N`, else the recipe's 0)."""
    return next((int(o.split("=", 1)[1]) for o in stream["overrides"] if o.startswith("seed=")), 0)


if __name__ == "__main__":
    main()
