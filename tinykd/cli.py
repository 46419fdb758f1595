"""The `tinykd` command. Thin and lazy: TensorFlow is imported inside the commands that need it."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from tinykd.config import HELD_OUT_SPLITS, word_counts
from tinykd.errors import TinykdError

EXIT_USAGE = 2


def main() -> None:
    """Console-script entry point: typed errors become one clear line and exit code 2."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted; run the same command again to resume from the last finished stage", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except TinykdError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)


@click.group()
@click.version_option(package_name="tinykd")
def cli() -> None:
    """Distil a big Keras model into a tiny int8 one for Cortex-M, and prove it fits."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value by dotted key, e.g. --set distill.temperature=6 (repeatable).")
@click.option("--smoke", is_flag=True, help="Shrink the recipe to seconds (few samples, one epoch per stage).")
@click.option("--force", multiple=True, metavar="STAGE",
              help="Redo STAGE (and everything after it) even if its inputs are unchanged (repeatable).")
@click.option("--runs", "runs_dir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Folder for runs/<name>/<stage>/ artifacts and the shared teacher cache.")
@click.option("--quiet", is_flag=True, help="Only the stage lines, no epoch progress.")
@click.option("--check", is_flag=True,
              help="Rebuild from scratch in a temporary folder and fail, naming the files, if any .tflite or "
                   "exported file differs from runs/<name>/manifest.json (written by every build).")
@click.option("--verbose", is_flag=True,
              help="Also TensorFlow's own log lines (start-up, converter), hidden by default.")
def build(recipe: Path, overrides: tuple[str, ...], smoke: bool, force: tuple[str, ...], runs_dir: Path,
          quiet: bool, check: bool, verbose: bool) -> None:
    """Build RECIPE: teacher, distil, prune, QAT, int8 .tflite, TFLM check, C files and report."""
    if verbose:
        os.environ["TINYKD_VERBOSE"] = "1"  # read by tinykd.keras_shim, which is imported after this
    from tinykd import config

    cfg = config.load(recipe, config.parse_overrides(overrides), smoke=smoke)
    data_dirs = tuple(Path(p) for p in os.environ.get("TINYKD_DATA", "").split(os.pathsep) if p)
    started = time.time()

    def log(message: str) -> None:
        click.echo(f"{time.time() - started:7.1f}s {message}")

    from tinykd.pipeline import BuildOptions, build as run_build, check as check_build

    progress = 0 if quiet else (1 if sys.stdout.isatty() else 2)
    tflm_dir = Path(os.environ["TINYKD_TFLM_DIR"]) if os.environ.get("TINYKD_TFLM_DIR") else None
    options = BuildOptions(force=force, data_dirs=data_dirs, verbose=progress, log=log, tflm_dir=tflm_dir)
    if check:
        from tinykd.manifest import NAME

        log(f"checking {runs_dir / cfg.name / NAME}: rebuilding {cfg.name} from {recipe} from scratch")
        path = check_build(cfg, runs_dir, options)
        log(f"check passed: every .tflite and exported file is byte-identical to {path}")
        return
    log(f"building {cfg.name} from {recipe} into {runs_dir / cfg.name}")
    result = run_build(cfg, runs_dir, options)
    if not result.chief:
        log("done: this worker trained every training stage with the others; the chief writes the run")
        return
    log(f"done: teacher {result.teacher_accuracy:.2%} -> int8 student {result.tflm_accuracy:.2%} in TFLite Micro, "
        f"{result.tflite_bytes:,} B .tflite, {result.arena_bytes:,} B arena; "
        f"report: {result.run_dir / 'report.md'}")
    listening = result.report.get("listening")
    if listening and not listening["fits_with_room"]:
        from tinykd.audio.stream import listening_line
        log("warning: " + listening_line(listening, cfg.target.board).replace("**", ""))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", metavar="ID",
              help="Check the budget on this board (default: search.board, then target.board).")
@click.option("--budget", metavar="KEY=N,...",
              help="Limits on the board, e.g. latency_ms=5,flash_bytes=200000,ram_bytes=100000 (search.* keys).")
@click.option("--trials", type=click.IntRange(min=1),
              help="Candidates to sample and measure per bracket (search.trials).")
@click.option("--hours", type=click.FloatRange(min=0.0, min_open=True),
              help="Run brackets until this much search time is spent; no trial starts after it (search.hours).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value by dotted key, e.g. --set search.max_epochs=6 (repeatable).")
@click.option("--smoke", is_flag=True, help="Shrink the recipe to seconds (few samples, one or two epochs a trial).")
@click.option("--runs", "runs_dir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Folder of runs/<name>/ (the teacher) and the shared teacher cache.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for search.json, table.md, pareto.png and recipe.yaml; default runs/<name>/search.")
def search(recipe: Path, board: str | None, budget: str | None, trials: int | None, hours: float | None,
           overrides: tuple[str, ...], smoke: bool, runs_dir: Path, out_dir: Path | None) -> None:
    """Search for the student of RECIPE that fits a budget: measure candidates untrained, distil the feasible ones
    with successive halving, and write a recipe with the winner. Run it again to resume."""
    from tinykd import config
    from tinykd.errors import ConfigError

    settings = config.parse_overrides(overrides)
    options = {}  # the override each option became -> how the user wrote it, for error messages
    for pair in (budget.split(",") if budget else []):
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or key not in ("latency_ms", "flash_bytes", "ram_bytes"):
            raise ConfigError(f"--budget {pair!r}: expected latency_ms=N, flash_bytes=N or ram_bytes=N, "
                              "comma-separated, e.g. --budget latency_ms=5,flash_bytes=200000")
        settings[f"search.{key}"] = value
        options[f"--set search.{key}={value}: search.{key}"] = f"--budget {key}={value}: {key}"
    for key, value in (("board", board), ("trials", trials), ("hours", hours)):
        if value is not None:
            settings[f"search.{key}"] = str(value)
            options[f"--set search.{key}={value}: search.{key}"] = f"--{key} {value}"
    try:
        cfg = config.load(recipe, settings, smoke=smoke)
    except ConfigError as error:
        message = str(error)
        for written, given in options.items():
            message = given + message[len(written):] if message.startswith(written) else message
        raise ConfigError(message) from None
    data_dirs = tuple(Path(p) for p in os.environ.get("TINYKD_DATA", "").split(os.pathsep) if p)
    started = time.time()

    def log(message: str) -> None:
        click.echo(f"{time.time() - started:7.1f}s {message}")

    from tinykd.search import SearchOptions, search as run_search

    result = run_search(cfg, runs_dir, SearchOptions(out_dir=out_dir, data_dirs=data_dirs, log=log,
                                                     source=str(recipe)))
    click.echo((result.out_dir / "table.md").read_text(encoding="utf-8"))
    chosen = result.summary["winner"]
    if chosen is None:
        log(f"no trial finished within the time budget; candidates: {result.out_dir / 'table.md'}")
        return
    log(f"winner: candidate {chosen['index']} ({chosen['name']}), int8 val {chosen['int8_val_accuracy']:.2%} after "
        f"{chosen['epochs']} epochs, {chosen['latency_ms']:.3f} ms, {chosen['flash_bytes']:,} B flash, "
        f"{chosen['ram_bytes']:,} B RAM; search {result.summary['search_seconds']:.0f} s")
    log(f"plot: {result.out_dir / 'pareto.png'}; recipe: {result.recipe} (tinykd build {result.recipe})")


@cli.command()
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--boards", "boards_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file of your own boards (same keys as tinykd/boards.yaml), added to the list.")
def boards(output_format: str, boards_file: Path | None) -> None:
    """List the boards a recipe's target.board or `tinykd report --board` can name."""
    from tinykd.boards import load_boards

    known = load_boards(boards_file)
    if output_format == "json":
        click.echo(json.dumps([b.__dict__ for b in known.values()], indent=2))
        return
    click.echo(f"{'board':22} {'core':14} {'simd':6} {'MHz':>5} {'flash KiB':>10} {'arena RAM KiB':>14} kernels")
    for board in known.values():
        click.echo(f"{board.id:22} {board.core:14} {board.simd:6} {board.clock_mhz:>5g} "
                   f"{board.flash_bytes // 1024:>10,} {board.arena_ram_bytes // 1024:>14,} {board.kernels}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", "board_ids", multiple=True, metavar="ID",
              help="A board from `tinykd boards` (repeatable); default: every board.")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "md"]), default="table",
              show_default=True)
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write latency_per_layer.png (for the first board only: the first --board, or the first of "
                   "`tinykd boards`) and memory_per_board.png (every board) into this folder.")
@click.option("--calibrate", "calibration_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="Your measured latencies (CSV: model,board,latency_ms) to refit the latency of those boards.")
@click.option("--boards", "boards_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file of your own boards (same keys as tinykd/boards.yaml).")
@click.option("--every", "every_ms", type=click.IntRange(min=1), metavar="MS",
              help="A streaming model runs once every MS ms (a keyword spotter's stride): say per board whether it "
                   "keeps up, with a fifth of MS left for the audio front-end.")
@click.option("--frame-stride-ms", type=click.IntRange(min=1),
              help="With --every: the front-end's window stride; a suggested stride is a multiple of it. "
                   "[default: 20, micro_speech's]")
def report(model: Path, board_ids: tuple[str, ...], output_format: str, plot_dir: Path | None,
           calibration_csv: Path | None, boards_file: Path | None, every_ms: int | None,
           frame_stride_ms: int | None) -> None:
    """Flash, RAM and latency of MODEL (.tflite) on Cortex-M boards, and whether it fits. No TensorFlow needed."""
    from tinykd.boards import load_boards
    from tinykd.errors import ConfigError
    from tinykd.report import render, report_model

    if frame_stride_ms is not None and every_ms is None:
        raise click.UsageError("--frame-stride-ms only applies to a stride: add --every MS")
    known = load_boards(boards_file)
    unknown = [b for b in board_ids if b not in known]
    if unknown:
        raise ConfigError(f"--board: unknown board {unknown[0]!r}; known boards: {', '.join(sorted(known))} "
                          "(add your own with --boards FILE)")
    chosen = [known[b] for b in board_ids] if board_ids else list(known.values())
    fit = None
    if calibration_csv is not None:
        from tinykd.report import calibration, latency
        from tinykd.report.coefficients import FIT

        fit = latency.calibrate(FIT, calibration.load_measurements(calibration_csv, known))
    results = report_model(model, chosen, fit=fit)
    listening, lines = [], []
    if every_ms is not None:
        from tinykd.audio import FrontendConfig
        from tinykd.audio.stream import listening as listening_on, listening_line

        frame_stride_ms = frame_stride_ms or FrontendConfig.window_stride_ms  # micro_speech's, the default
        listening = [listening_on(every_ms, result.latency_range_ms, frame_stride_ms) for result in results]
        lines = [listening_line(listened, result.board, "--every") for result, listened in zip(results, listening)]
    if output_format == "json":
        rows = [result.as_dict() for result in results]
        for row, listened in zip(rows, listening):
            row["listening"] = listened
        click.echo(json.dumps(rows, indent=2))
    elif output_format == "md":
        click.echo(render.markdown(results, model.name, notes=lines), nl=False)
    else:
        click.echo(render.table(results, model.name, notes=lines))
    if plot_dir is not None:
        for path in render.plots(results, plot_dir, model.name):
            click.echo(f"wrote {path}", err=True)


@cli.command(name="export")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the files; created if missing. Files of other names in it are kept.")
@click.option("--name", help="Prefix of every file and C identifier; default: the model file name as a C identifier.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path),
              help="UTF-8 text file, one label per line in output order; default: class0 ... classN-1.")
@click.option("--layout", type=click.Choice(["plain", "cmake", "arduino"]), default="plain", show_default=True,
              help="plain: files only; cmake: plus a CMakeLists.txt library target; arduino: an Arduino library.")
@click.option("--board", "board_id", metavar="ID",
              help="Size the arena for this board (`tinykd boards`); default: the largest over every board.")
def export_command(model: Path, out_dir: Path, name: str | None, labels_file: Path | None, layout: str,
                   board_id: str | None) -> None:
    """Write TFLite Micro C++ files for MODEL (an int8 .tflite): model data, settings, op resolver, example."""
    from tinykd.boards import load_boards
    from tinykd.errors import ConfigError
    from tinykd.export import arena_with_margin, c_identifier, export, firmware_spec, read_labels, seeded_inputs
    from tinykd.report import read_model

    tflite = read_model(model)
    labels = read_labels(labels_file) if labels_file is not None else None
    known = load_boards()
    if board_id is not None and board_id not in known:
        raise ConfigError(f"--board: unknown board {board_id!r}; known boards: {', '.join(sorted(known))}")
    spec, sized_board = firmware_spec(tflite, str(model), name=name if name is not None else c_identifier(model.stem),
                                      labels=labels, board=board_id)
    # The same steps as tinykd.export (export_model), split so the command can say which board sized the arena.
    paths = export(tflite, spec, out_dir, layout, golden_inputs=seeded_inputs(tflite))
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"{spec.name}: {len(spec.labels)} classes, arena {arena_with_margin(spec.arena_bytes):,} B "
               f"({spec.arena_bytes:,} B for {sized_board} from `tinykd report`, plus the margin)")


@cli.group()
def firmware() -> None:
    """Run exports on emulated Cortex-M cores: TFLite Micro + CMSIS-NN built for the core, on QEMU."""


@firmware.command(name="check")
@click.argument("export_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--core", "cores", multiple=True, metavar="CORE",
              type=click.Choice(["cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"]),
              help="Emulated core (repeatable); default: cortex-m4, cortex-m33 and cortex-m55 (Helium).")
@click.option("--tflm", "tflm_dir", type=click.Path(file_okay=False, path_type=Path),
              help="TFLite Micro source tree; default: $TINYKD_TFLM_DIR, else ../shared/tflm/tflite-micro "
                   "beside this checkout.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--time-limit", "time_limit_s", default=300, show_default=True, type=click.IntRange(min=1),
              help="Seconds one firmware may run on QEMU before it counts as hung.")
def firmware_check(export_dir: Path, cores: tuple[str, ...], tflm_dir: Path | None, output_format: str,
                   time_limit_s: int) -> None:
    """Build EXPORT_DIR (a `tinykd export`) for each core, run its golden vectors on QEMU, and report PASS/FAIL,
    the smallest arena that allocates on the device and instructions per Invoke() and per operator.
    Exit 0 only if every vector passes and the exported arena constant allocates on every core."""
    from tinykd import firmware as harness

    if tflm_dir is None:
        from_env = os.environ.get("TINYKD_TFLM_DIR")
        tflm_dir = Path(from_env) if from_env else harness.SHARED_TFLM
    results = harness.check(export_dir, tflm_dir, cores or harness.DEFAULT_CORES, time_limit_s)
    if output_format == "json":
        click.echo(json.dumps([harness.as_dict(result) for result in results], indent=2))
    else:
        click.echo(f"{'core':11} {'machine':11} {'vectors':>8} {'features':>9} {'arena exported':>15} "
                   f"{'smallest':>9} {'used':>8} {'instructions':>13}  result")
        for result in results:
            features = "-" if result.features_differing is None else f"{result.features_differing} diff"
            exported = f"{result.arena_exported_bytes:,}{'' if result.arena_exported_allocates else ' (no)'}"
            click.echo(f"{result.core:11} {result.machine:11} {result.vectors_passed:>3}/{result.vectors_total:<4} "
                       f"{features:>9} {exported:>15} {result.arena_smallest_bytes:>9,} "
                       f"{result.arena_used_bytes:>8,} {result.instructions:>13,}  "
                       f"{'PASS' if result.passed else 'FAIL'}{': ' + result.error if result.error else ''}")
        for result in results:
            click.echo(f"{result.core}: {harness.CORES[result.core][1]}", err=True)
    if not all(result.passed for result in results):
        sys.exit(1)


def _word_counts(ctx, param, pairs: tuple[str, ...]) -> dict[str, int]:
    """`--train-word-clips off=6 --train-word-clips up=6` -> {"off": 6, "up": 6}, parsed as the recipe's key is."""
    try:
        return word_counts(pairs)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


@cli.group()
def data() -> None:
    """Make datasets a recipe's data.path can name."""


@data.command(name="keywords")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Same seed, same files, byte for byte.")
@click.option("--speakers", default=128, show_default=True, type=click.IntRange(min=3),
              help="Synthetic speakers (engine, voice, variant); a tenth each are held out for validation and test.")
@click.option("--extra-train-speakers", default=0, show_default=True, type=click.IntRange(min=0),
              help="More speakers for training only; the held-out speakers stay those of --speakers alone.")
@click.option("--held-out", type=click.Choice(HELD_OUT_SPLITS), default="random", show_default=True,
              help="How the validation and test speakers are drawn: at random, or matched, as pairs of one "
                   "engine and variant, so that both hold the same kinds of voice.")
@click.option("--flite-clip-factor", default=1, show_default=True, type=click.IntRange(min=1),
              help="Each flite voice in training says this many times the clips: flite has 5 voices to "
                   "espeak-ng's 224, so 8 brings it from under 2% of the training clips to 11-14%.")
@click.option("--near-miss-clips", default=3, show_default=True, type=click.IntRange(min=1),
              help="Clips per speaker of each near miss of a keyword (lift, own, town, ...), the words a stream's "
                   "false accepts come from; the other unknown words get one.")
@click.option("--train-stream-minutes", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Also cut training clips from this many minutes of stream spoken by the training speakers: "
                   "each keyword whole at 3 places in the window, each other word twice and each noise burst once "
                   "as unknown (docs/audio.md).")
@click.option("--train-word-clips", "train_word_clips", multiple=True, metavar="WORD=N", callback=_word_counts,
              help="Each training speaker says WORD N times instead of 3 (a keyword or near miss) or 1; "
                   "repeatable. Held-out voices keep their counts, so validation, test and the streams stay.")
@click.option("--jobs", type=click.IntRange(min=1), help="Speech engines running at once; default: the CPU count.")
def keywords_command(out_dir: Path, seed: int, speakers: int, extra_train_speakers: int, held_out: str,
                     flite_clip_factor: int, near_miss_clips: int, train_stream_minutes: float,
                     train_word_clips: dict[str, int], jobs: int | None) -> None:
    """Write a synthetic Speech Commands dataset to OUT_DIR with espeak-ng and flite (offline)."""
    from tinykd.data.keyword_stream import stream_windows
    from tinykd.data.keywords import synthesize

    started = time.time()
    summary = synthesize(out_dir, seed=seed, speakers=speakers, extra_train_speakers=extra_train_speakers,
                         near_miss_clips=near_miss_clips, held_out=held_out, flite_clip_factor=flite_clip_factor,
                         train_word_clips=train_word_clips, extend=stream_windows(train_stream_minutes, seed, jobs),
                         jobs=jobs)
    speakers_text = ", ".join(f"{count} {split}" for split, count in summary.speakers)
    click.echo(f"wrote {summary.clips:,} clips ({summary.keyword_clips:,} keywords, {summary.other_clips:,} other "
               f"words; speakers: {speakers_text}) and {len(summary.noise_files)} noise files to {summary.out_dir} "
               f"in {time.time() - started:.0f} s")
    windows = summary.extended.get("train_stream_windows", {})
    if windows:
        click.echo(f"  and {sum(windows.values()):,} training windows cut from {train_stream_minutes:g} minutes of "
                   f"stream ({', '.join(f'{folder} {count:,}' for folder, count in sorted(windows.items()))})")
    click.echo(f"use it with   data: {{format: speech_commands, path: {summary.out_dir}}}")


@data.command(name="stream")
@click.argument("out_wav", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--minutes", default=30.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True,
              help="Whose voices: the speakers `tinykd data keywords` holds out for validation or for test.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="The data set's seed (it picks the held-out speakers); same seed, same stream.")
@click.option("--speakers", default=128, show_default=True, type=click.IntRange(min=3),
              help="The data set's speaker count, as given to `tinykd data keywords`.")
@click.option("--held-out", type=click.Choice(HELD_OUT_SPLITS), default="random", show_default=True,
              help="How the data set's held-out speakers were drawn, as given to `tinykd data keywords`.")
@click.option("--jobs", type=click.IntRange(min=1), help="Speech engines running at once; default: the CPU count.")
def stream_command(out_wav: Path, minutes: float, split: str, seed: int, speakers: int, held_out: str,
                   jobs: int | None) -> None:
    """Write a long keyword-spotting evaluation stream to OUT_WAV, and its events at known times beside it (.json)."""
    from tinykd.data.keyword_stream import make_stream, write_stream

    started = time.time()
    made = make_stream(minutes, split=split, seed=seed, speakers=speakers, held_out=held_out, jobs=jobs)
    audio_path, labels_path = write_stream(made, out_wav)
    counts = made.composition()
    click.echo(f"wrote {audio_path} ({counts['duration_ms'] / 60000:.1f} min: {counts['keyword_events']} keywords, "
               f"{counts['unknown_events']} other words, {counts['noise_events']} noise bursts, by "
               f"{counts['speakers']} {split} speakers) and {labels_path} in {time.time() - started:.0f} s")
