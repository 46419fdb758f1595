"""The measure stage: each float stage's model, post-training quantized, in TFLite Micro and on the board.

It shows what each stage bought as int8: unstructured zeros show here as what they are, the same bytes, flash
and latency as the model before pruning.
"""

from __future__ import annotations

from tinykd import artifacts, config
from tinykd.artifacts import Run
from tinykd.convert import gzip_bytes, int8_model
from tinykd.data import Dataset, Split


def stage(run: Run, cfg: config.Config, data: Dataset, floats: dict) -> dict[str, dict]:
    """Board figures and TFLM accuracy of every model in `floats` (stage name -> tinykd.distill.Student)."""

    def compute():
        test = data.test.head(cfg.verify.max_samples)
        run.log(f"[measure] {', '.join(floats)}: post-training int8, {len(test)} test samples in "
                f"TFLite Micro, on {cfg.target.board}")
        figures = {name: board_figures(int8_model(student.model, data, cfg, cfg.convert.representative_samples),
                                       cfg.target.board, test)
                   for name, student in floats.items()}
        return figures, figures

    key = artifacts.key("measure", {name: student.run_id for name, student in floats.items()},
                        config.as_dict(cfg.convert), config.as_dict(cfg.verify), cfg.target.board, data.fingerprint)
    return run.step("measure", key, compute).record["metrics"]


def board_figures(tflite: bytes, board: str, test: Split | None = None) -> dict:
    """What `board` needs for an int8 model, from `tinykd report` (flash = model + TFLM runtime code;
    RAM = arena + runtime state; the arena includes any decompression memory), its gzip size (information only:
    TFLM cannot run a gzipped model) and, given a test split, its top-1 accuracy measured in TFLM."""
    from tinykd.report import report
    from tinykd.verify import verify

    estimate = report(tflite, board)
    figures = {"tflite_bytes": len(tflite), "gzip_bytes": gzip_bytes(tflite), "flash_bytes": estimate.flash_bytes,
               "arena_bytes": estimate.arena_bytes, "ram_bytes": estimate.ram_bytes,
               "latency_ms": round(estimate.latency_ms, 3)}
    if test is not None:
        figures["tflm_accuracy"] = verify(tflite, test, arena_bytes=estimate.arena_host_bytes).tflm_accuracy
    return figures
