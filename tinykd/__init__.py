"""tinykd: distil a big Keras model into a tiny int8 one that runs on a Cortex-M, and prove it fits.

The public API, with the names the `tinykd` command uses (docs/api.md):

    cfg = tinykd.load_recipe("pipelines/smoke.yaml", smoke=True)     # a recipe, validated
    result = tinykd.build(cfg, "runs")                               # every stage -> BuildResult
    reports = tinykd.report(result.run_dir / "convert/model.tflite") # flash, RAM, latency per board
    print(tinykd.report_text(reports))                               # the table `tinykd report` prints
    tinykd.export(result.run_dir / "convert/model.tflite", "fw")     # TFLite Micro C++ files
    distiller = tinykd.Distiller(student, teacher, temperature=4.0)  # the loss in your own Keras training
    tflite = tinykd.convert(student, x_train[:256])                  # full-int8 .tflite bytes

`tinykd.keras` is the Keras tinykd works with (Keras 2: tf_keras, as TFMOT needs); build your own models with it.
Library functions return values and print nothing. `import tinykd` does not import TensorFlow: `build`,
`convert`, `Distiller` and `keras` import it when first used; `report`, `report_text`, `report_plots` and
`export` never do.
`report`, `export` and `convert` are the modules of those stages, made callable (calling one calls
`tinykd.report.report_model`, `tinykd.export.export_model`, `tinykd.convert.convert`), so that importing a stage
module can never replace the public function of the same name.
"""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

if typing.TYPE_CHECKING:  # the names __getattr__ gives on first use, for type checkers and editors
    from tinykd import convert, export, report
    from tinykd.config import Config
    from tinykd.distill import Distiller
    from tinykd.keras_shim import keras
    from tinykd.pipeline import BuildResult

__version__ = "0.1.0"
__all__ = ["load_recipe", "build", "report", "report_text", "report_plots", "convert", "export", "Distiller", "keras"]

_LAZY_MODULES = ("report", "export", "convert")  # callable stage modules, imported on first use


def load_recipe(path: str | Path, overrides: dict[str, str] | typing.Iterable[str] | None = None, *,
                smoke: bool = False) -> Config:
    """A YAML recipe, validated once (`tinykd build RECIPE --set ... --smoke`).

    Args:
        path: the recipe file; paths in it are relative to its folder.
        overrides: dotted keys and values, as a dict ({"distill.temperature": 6}) or "key=value" strings (--set).
        smoke: shrink the recipe to seconds; the run is named `<name>-smoke`.

    Raises:
        ConfigError: naming the file (or the override) and the dotted key.
    """
    from tinykd import config

    if overrides is None or isinstance(overrides, dict):
        pairs = {key: value if isinstance(value, str) else _yaml_text(value)
                 for key, value in (overrides or {}).items()}
    else:
        pairs = config.parse_overrides([overrides] if isinstance(overrides, str) else overrides)
    return config.load(path, pairs, smoke=smoke)


def build(recipe: str | Path | Config, runs_dir: str | Path = "runs", *,
          overrides: dict[str, str] | typing.Iterable[str] | None = None, smoke: bool = False,
          force: typing.Iterable[str] = (), log: typing.Callable[[str], None] | None = None) -> BuildResult:
    """Build a recipe (`tinykd build`): teacher, distil, prune, QAT, int8 .tflite, TFLM check, C files, report.

    Finished stages in `runs_dir/<name>/` are reused, as on the command line; silent unless `log` is given.

    Args:
        recipe: a recipe file (loaded with `overrides` and `smoke`) or a Config from `load_recipe`.
        runs_dir: folder for runs/<name>/<stage>/ artifacts and the shared teacher cache.
        force: stages to redo (with every stage after them) even if their inputs are unchanged.
        log: called with each progress line (e.g. `print`); None: no progress.

    Returns:
        BuildResult: `run_dir`, the report dict (runs/<name>/report.json) and its headline figures; the int8 model
        is `run_dir / "convert/model.tflite"`, the C files are in `run_dir / "export"`.

    Raises:
        ConfigError: a bad recipe, override or stage name; other TinykdErrors from the stage that failed.
    """
    from tinykd import config, pipeline
    from tinykd.errors import ConfigError

    if isinstance(recipe, config.Config):
        if overrides or smoke:
            raise ConfigError("overrides and smoke apply when the recipe is loaded: pass them to "
                              "tinykd.load_recipe, or give build() the recipe's path")
        cfg = recipe
    else:
        cfg = load_recipe(recipe, overrides, smoke=smoke)
    options = pipeline.BuildOptions(force=tuple(force), log=log if log is not None else (lambda message: None))
    return pipeline.build(cfg, Path(runs_dir), options)


def report_text(reports: typing.Any, format: str = "table", *, source: str = "model") -> str:
    """A report as `tinykd report --format` prints it: "table", "json" or "md" (Markdown for a pull request).

    Args:
        reports: what `tinykd.report` returned (one Report or a list).
        source: the model's name in the heading, e.g. the file name.
    """
    from tinykd.errors import ConfigError
    from tinykd.report import render

    reports = _as_tuple(reports)
    if format == "json":
        return render.as_json(reports)
    if format == "md":
        return render.markdown(reports, source)
    if format == "table":
        return render.table(reports, source)
    raise ConfigError(f"format: {format!r} is not one of table, json, md")


def report_plots(reports: typing.Any, folder: str | Path | None = None, *, source: str = "model") -> list:
    """The plots of `tinykd report --plot`: latency per layer on the first board, memory per board.

    Returns matplotlib Figures (a notebook shows them inline); with `folder`, also writes them there as
    latency_per_layer.png and memory_per_board.png.
    """
    from tinykd.report import render

    figures = render.figures(_as_tuple(reports), source)
    if folder is not None:
        render.save_plots(figures, Path(folder))
    return figures


def __getattr__(name: str):
    # PEP 562: the stage modules and the Distiller (TensorFlow) load on first use, so `import tinykd` stays fast.
    if name in _LAZY_MODULES:
        return importlib.import_module(f"tinykd.{name}")
    if name == "Distiller":
        from tinykd.distill import Distiller

        return Distiller
    if name == "keras":  # Keras 2 (tf_keras), the one tinykd's stages use, with TensorFlow's start-up noise quieted
        from tinykd.keras_shim import keras

        return keras
    raise AttributeError(f"module 'tinykd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _as_tuple(reports) -> tuple:
    from tinykd.report import Report

    return (reports,) if isinstance(reports, Report) else tuple(reports)


def _yaml_text(value) -> str:
    """A Python value as the YAML text an override holds (True -> "true", [8, 16] -> "[8, 16]")."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
