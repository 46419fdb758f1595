"""The `tinykd` command. Thin and lazy: TensorFlow is imported inside the commands that need it."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

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
def build(recipe: Path, overrides: tuple[str, ...], smoke: bool, force: tuple[str, ...], runs_dir: Path,
          quiet: bool) -> None:
    """Build RECIPE: teacher, distil, prune, QAT, int8 .tflite, TFLM check, C files and report."""
    from tinykd import config

    cfg = config.load(recipe, config.parse_overrides(overrides), smoke=smoke)
    data_dirs = tuple(Path(p) for p in os.environ.get("TINYKD_DATA", "").split(os.pathsep) if p)
    started = time.time()

    def log(message: str) -> None:
        click.echo(f"{time.time() - started:7.1f}s {message}")

    log(f"building {cfg.name} from {recipe} into {runs_dir / cfg.name}")
    from tinykd.pipeline import BuildOptions, build as run_build

    verbose = 0 if quiet else (1 if sys.stdout.isatty() else 2)
    report = run_build(cfg, runs_dir, BuildOptions(force=force, data_dirs=data_dirs, verbose=verbose, log=log))
    int8 = report["int8"]
    teacher = report["stages"][0]
    log(f"done: teacher {teacher['test_accuracy']:.2%} -> int8 student {int8['tflm_accuracy']:.2%} in TFLite Micro, "
        f"{int8['tflite_bytes']:,} B .tflite, {int8['arena_bytes_host']:,} B arena; "
        f"report: {runs_dir / cfg.name / 'report.md'}")


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
              help="Write latency_per_layer.png and memory_per_board.png into this folder.")
@click.option("--calibrate", "calibration_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="Your measured latencies (CSV: model,board,latency_ms) to refit the latency of those boards.")
@click.option("--boards", "boards_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file of your own boards (same keys as tinykd/boards.yaml).")
def report(model: Path, board_ids: tuple[str, ...], output_format: str, plot_dir: Path | None,
           calibration_csv: Path | None, boards_file: Path | None) -> None:
    """Flash, RAM and latency of MODEL (.tflite) on Cortex-M boards, and whether it fits. No TensorFlow needed."""
    from tinykd.boards import load_boards
    from tinykd.errors import ConfigError
    from tinykd.report import read_model, render, reports

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
    results = reports(read_model(model), chosen, fit, source=str(model))
    if output_format == "json":
        click.echo(render.as_json(results))
    elif output_format == "md":
        click.echo(render.markdown(results, model.name), nl=False)
    else:
        click.echo(render.table(results, model.name))
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
    from tinykd.export import FirmwareSpec, arena_with_margin, c_identifier, default_labels, export, read_labels
    from tinykd.report import read_model, reports

    tflite = read_model(model)
    labels = read_labels(labels_file) if labels_file is not None else default_labels(tflite, str(model))
    known = load_boards()
    if board_id is not None and board_id not in known:
        raise ConfigError(f"--board: unknown board {board_id!r}; known boards: {', '.join(sorted(known))}")
    chosen = [known[board_id]] if board_id is not None else list(known.values())
    # Each board's arena is the 32-bit figure of `tinykd report`; they differ only by CMSIS-NN scratch.
    sized = max(reports(tflite, chosen, source=str(model)), key=lambda result: result.arena_bytes)
    spec = FirmwareSpec(name=name if name is not None else c_identifier(model.stem), labels=labels,
                        arena_bytes=sized.arena_bytes)
    paths = export(tflite, spec, out_dir, layout)
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"{spec.name}: {len(labels)} classes, arena {arena_with_margin(spec.arena_bytes):,} B "
               f"({spec.arena_bytes:,} B for {sized.board} from `tinykd report`, plus the margin)")


@cli.group()
def data() -> None:
    """Make datasets a recipe's data.path can name."""


@data.command(name="keywords")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Same seed, same files, byte for byte.")
@click.option("--speakers", default=128, show_default=True, type=click.IntRange(min=3),
              help="Synthetic speakers (engine, voice, variant); a tenth each are held out for validation and test.")
@click.option("--jobs", type=click.IntRange(min=1), help="Speech engines running at once; default: the CPU count.")
def keywords_command(out_dir: Path, seed: int, speakers: int, jobs: int | None) -> None:
    """Write a synthetic Speech Commands dataset to OUT_DIR with espeak-ng and flite (offline)."""
    from tinykd.data.keywords import synthesize

    started = time.time()
    summary = synthesize(out_dir, seed=seed, speakers=speakers, jobs=jobs)
    speakers_text = ", ".join(f"{count} {split}" for split, count in summary.speakers)
    click.echo(f"wrote {summary.clips:,} clips ({summary.keyword_clips:,} keywords, {summary.other_clips:,} other "
               f"words; speakers: {speakers_text}) and {len(summary.noise_files)} noise files to {summary.out_dir} "
               f"in {time.time() - started:.0f} s")
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
@click.option("--jobs", type=click.IntRange(min=1), help="Speech engines running at once; default: the CPU count.")
def stream_command(out_wav: Path, minutes: float, split: str, seed: int, speakers: int, jobs: int | None) -> None:
    """Write a long keyword-spotting evaluation stream to OUT_WAV, and its events at known times beside it (.json)."""
    from tinykd.data.keyword_stream import make_stream, write_stream

    started = time.time()
    made = make_stream(minutes, split=split, seed=seed, speakers=speakers, jobs=jobs)
    audio_path, labels_path = write_stream(made, out_wav)
    counts = made.composition()
    click.echo(f"wrote {audio_path} ({counts['duration_ms'] / 60000:.1f} min: {counts['keyword_events']} keywords, "
               f"{counts['unknown_events']} other words, {counts['noise_events']} noise bursts, by "
               f"{counts['speakers']} {split} speakers) and {labels_path} in {time.time() - started:.0f} s")
