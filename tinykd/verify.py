"""Run an int8 model in the real TFLite Micro interpreter and in TFLite's reference kernels, and compare.

TFLM is what runs on the device, so its accuracy is the accuracy tinykd reports; TFLite's reference kernels
(`OpResolverType.BUILTIN_REF`) are the independent implementation it is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinykd import artifacts, config, tflm
from tinykd.artifacts import Run
from tinykd.data import Dataset, Split
from tinykd.errors import ModelError, VerificationError


@dataclass(frozen=True, kw_only=True)
class Verification:
    """How TFLM and the TFLite reference kernels compare on one split, and the TFLM accuracy."""

    samples: int
    tflm_accuracy: float
    tflite_accuracy: float
    top1_agreement: float
    identical_fraction: float
    max_lsb_diff: int
    confusion: tuple[tuple[int, ...], ...]  # TFLM predictions: row = true class, column = predicted class


@dataclass(frozen=True)
class Verified:
    """What the verify stage hands on: the arena `tinykd report` gives for the recipe's board, and its run id."""

    arena_bytes: int
    run_id: str


def stage(run: Run, cfg: config.Config, data: Dataset, model) -> Verified:
    """The verify stage: the test split in TFLite Micro and in TFLite's reference kernels (`model`:
    tinykd.convert.Converted); TFLM accuracy is the one reported.

    Raises:
        VerificationError: the two runtimes disagree on a top-1 class, so the accuracy depends on the runtime.
    """
    from tinykd.report import report

    def compute():
        test = data.test.head(cfg.verify.max_samples)
        run.log(f"[verify] {len(test)} test samples in TFLite Micro and TFLite reference kernels")
        # The report measures the arena in a child process (a crash there cannot take the build down);
        # verify reuses that measurement instead of searching for the arena a second time.
        board = report(model.tflite, cfg.target.board, source=str(run.root / "convert" / "model.tflite"))
        result = verify(model.tflite, test, arena_bytes=board.arena_host_bytes)
        return None, result.__dict__ | {"arena_bytes": board.arena_host_bytes, "board_report": board.as_dict()}

    done = run.step("verify", artifacts.key("verify", config.as_dict(cfg.verify), cfg.target.board, model.run_id,
                                            data.fingerprint), compute)
    metrics = done.record["metrics"]
    if metrics["top1_agreement"] < 1.0:
        disagree = round((1.0 - metrics["top1_agreement"]) * metrics["samples"])
        raise VerificationError(
            f"TFLite Micro and the TFLite reference kernels disagree on the top-1 class of {disagree} of "
            f"{metrics['samples']} test inputs (largest output difference {metrics['max_lsb_diff']} LSB), so "
            f"the accuracy of {run.root / 'convert' / 'model.tflite'} depends on the runtime. TFLite's "
            "reference FULLY_CONNECTED and MEAN kernels round differently from TFLite Micro's: use a student "
            "head without them (head: flatten or pool_flatten, dense_units: 0; in your own model, a Conv2D over the "
            "whole feature map in place of Dense, see docs/own_models.md), or measure on the board.")
    return Verified(metrics["board_report"]["arena_bytes"], done.run_id)


def verify(tflite: bytes, split: Split, arena_bytes: int | None = None) -> Verification:
    """Run every sample of `split` through both interpreters; inputs are quantized with the model's input params.

    Args:
        arena_bytes: the TFLM arena already measured for this model (e.g. by tinykd.report); measured when None.

    Raises:
        VerificationError: TFLM cannot load or run the model.
    """
    from tinykd.keras_shim import lite_interpreter

    arena = measure_arena(tflite) if arena_bytes is None else arena_bytes
    reference = lite_interpreter(tflite, reference_kernels=True)
    inputs = quantize_input(split.x, reference.get_input_details()[0]["quantization_parameters"])
    # TFLM runs in a child process (tinykd.tflm), on the other core while TFLite's reference kernels run here.
    running = tflm.start(tflite, inputs, arena + 1024)
    try:
        ref_out = _run_reference(reference, inputs)
    except BaseException:
        running.cancel()
        raise
    try:
        micro_out = running.outputs()[0]
    except ModelError as error:
        raise VerificationError(str(error)) from None
    micro_top1, ref_top1 = micro_out.argmax(-1), ref_out.argmax(-1)
    return Verification(
        samples=len(inputs),
        tflm_accuracy=float(np.mean(micro_top1 == split.y)),
        tflite_accuracy=float(np.mean(ref_top1 == split.y)),
        top1_agreement=float(np.mean(micro_top1 == ref_top1)),
        identical_fraction=float(np.mean(np.all(micro_out == ref_out, axis=-1))),
        max_lsb_diff=int(np.max(np.abs(micro_out.astype(np.int32) - ref_out.astype(np.int32)), initial=0)),
        confusion=confusion_matrix(split.y, micro_top1, micro_out.shape[-1]),
    )


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> tuple[tuple[int, ...], ...]:
    """Counts of (true class, predicted class) pairs."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return tuple(tuple(int(v) for v in row) for row in counts)


def _run_reference(reference, inputs: np.ndarray) -> np.ndarray:
    """Outputs of the TFLite interpreter for each input, one sample at a time (the batch the model was built for)."""
    reference.allocate_tensors()
    input_index = reference.get_input_details()[0]["index"]
    output_index = reference.get_output_details()[0]["index"]
    outputs = []
    for sample in inputs:
        reference.set_tensor(input_index, sample[np.newaxis])
        reference.invoke()
        outputs.append(reference.get_tensor(output_index)[0].copy())
    return np.array(outputs)


def measure_arena(tflite: bytes) -> int:
    """The smallest TFLM tensor arena (bytes, 16-byte steps) in which the model allocates, on this 64-bit host.

    Found by search rather than read from the allocator: the planner needs temporary room while it plans, so the
    arena in use after allocation understates what `AllocateTensors()` requires. Measured in a child process with
    a time limit (tinykd.report.arena), because a corrupt model can crash or hang TFLM.

    Raises:
        VerificationError: TFLM cannot allocate or run the model.
    """
    from tinykd.report import arena

    try:
        return arena.measure(tflite).host_bytes
    except ModelError as error:
        raise VerificationError(str(error)) from None


def quantize_input(x: np.ndarray, quantization: dict) -> np.ndarray:
    """Float model inputs to the model's int8 input: q = clamp(round(x / scale) + zero_point, -128, 127)."""
    scale = float(quantization["scales"][0])
    zero_point = int(quantization["zero_points"][0])
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
