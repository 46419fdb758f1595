"""Keras -> full-int8 .tflite (int8 input and output), and a check that no float op is left.

This module is also the public `tinykd.convert(model, representative)`: calling it calls `convert`.
"""

from __future__ import annotations

import gzip
import sys
import types
import warnings
from dataclasses import dataclass

import numpy as np

from tinykd import artifacts, config
from tinykd.artifacts import Run
from tinykd.data import Dataset
from tinykd.errors import ConversionError
from tinykd.keras_shim import lite_interpreter, native_logs, tf

# Ops that legitimately touch float tensors in a full-int8 model: none. QUANTIZE/DEQUANTIZE between int8 types
# are fine, a float one means the input or output was left in float.
_FLOAT_TYPES = {np.float32, np.float16, np.float64}


@dataclass(frozen=True)
class Converted:
    """An int8 .tflite the build ships, the id of the run that made it, and the memory TFLM needs beyond the
    arena to decode it (LUT compression; 0 for a plain model)."""

    tflite: bytes
    run_id: str
    decompression_memory_bytes: int = 0


def stage(run: Run, cfg: config.Config, data: Dataset, student) -> Converted:
    """The convert stage: full-int8 .tflite of the last training stage's model (`student`: tinykd.distill.Student),
    calibrated on training samples; fails naming any float op."""
    from tinykd import model_file

    def compute():
        run.log("[convert] full-int8 conversion" + ("" if cfg.quantize else
                                                    " (post-training quantization: quantize is none)"))
        tflite = int8_model(student.model, data, cfg, cfg.convert.representative_samples)
        info = model_file.read(tflite, str(run.root / "convert" / "model.tflite"))
        if cfg.frontend is not None:
            _check_frontend_input(info, run.root / "convert" / "model.tflite")
        return tflite, {"tflite_bytes": len(tflite), "gzip_bytes": gzip_bytes(tflite), "ops": list(info.op_names),
                        "input": _tensor(info.inputs[0]), "output": _tensor(info.outputs[0])}

    done = run.step("convert", artifacts.key("convert", config.as_dict(cfg.convert), student.run_id), compute,
                    save=lambda folder, tflite: artifacts.write_bytes(folder / "model.tflite", tflite),
                    load=lambda folder: (folder / "model.tflite").read_bytes(), artifact="model.tflite")
    return Converted(done.value, done.run_id)


def int8_model(model, data: Dataset, cfg: config.Config, samples: int) -> bytes:
    """Full-int8 .tflite of `model`, calibrated on `samples` seeded training samples: post-training quantization
    for a float model, learned ranges for a QAT one.

    For an audio recipe calibration also sees both ends of the front-end's int8 grid, so the converted input scale
    and zero point are the front-end's (1/256, -128) and the firmware copies its int8 features straight into the
    input tensor (a QAT model's input quantizer is pinned to the same range by tinykd.quantize).
    """
    representative = data.train.sample_inputs(samples, cfg.seed)
    if cfg.frontend is not None:
        from tinykd.audio import to_model_input

        low, high = (float(to_model_input(np.array([edge], dtype=np.int8))[0]) for edge in (-128, 127))
        edges = np.stack([np.full(representative.shape[1:], low), np.full(representative.shape[1:], high)])
        representative = np.concatenate([edges.astype(representative.dtype), representative])
    return convert(model, representative)


def gzip_bytes(tflite: bytes) -> int:
    """The gzip size of a model (information only: TFLM cannot run a gzipped model)."""
    return len(gzip.compress(tflite, compresslevel=9, mtime=0))


def _check_frontend_input(info, path) -> None:
    from tinykd.audio import INPUT_SCALE, INPUT_ZERO_POINT

    given = info.inputs[0]
    if given.scale != INPUT_SCALE or given.zero_point != INPUT_ZERO_POINT:
        raise ConversionError(
            f"{path}: the converted input has scale {given.scale} and zero point {given.zero_point}, not the "
            f"front-end's {INPUT_SCALE} and {INPUT_ZERO_POINT}, so the firmware's int8 features would not be the "
            "model's input. This is a tinykd bug; please report it with the recipe.")


def _tensor(info) -> dict:
    return {"shape": list(info.shape), "dtype": info.dtype, "scale": info.scale, "zero_point": info.zero_point}


def convert(model, representative: np.ndarray) -> bytes:
    """A full-int8 .tflite of `model`; `representative` inputs calibrate activation ranges.

    For a quantization-aware model the ranges come from training and calibration only fills gaps; for a float
    model this is post-training quantization.

    Raises:
        ConversionError: the converter failed, or a float op remains (named).
    """

    def samples():
        for sample in representative:
            yield [sample[np.newaxis].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with native_logs(), warnings.catch_warnings():
            # A QAT model's int8 input range is learned, so the converter needs no input statistics.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            tflite = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many types; all mean "cannot be int8"
        raise ConversionError(f"{model.name}: the TFLite converter could not make a full-int8 model: "
                              f"{str(error).strip().splitlines()[-1] if str(error).strip() else error!r}. "
                              "Use layers with int8 TFLite kernels (see tinykd.models).") from None
    check_full_int8(tflite, model.name)
    return short_tensor_names(tflite, model.name)


def short_tensor_names(tflite: bytes, scope: str) -> bytes:
    """The model with readable, short, unique tensor names instead of the converter's fused ones.

    The converter names a tensor by every graph node fused into it ("student/quant_block1_conv1_relu/Relu;
    student/quant_block1_conv1_bn/FusedBatchNormV3;student/quant_block1_conv1/Conv2D"): about 85 bytes a tensor,
    1.2 KB of flash on a 30 KB model, which TFLite Micro never reads. Each tensor keeps the Keras layer it comes
    from: "block1_conv1/weights", "block1_conv1/bias", "block1_conv1_relu/Relu", "input", "output". The bytes
    are the converter's with only the names changed (tinykd.model_file.rewrite).
    """
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

    from tinykd import model_file

    weighted = {schema_fb.BuiltinOperator.CONV_2D, schema_fb.BuiltinOperator.DEPTHWISE_CONV_2D,
                schema_fb.BuiltinOperator.FULLY_CONNECTED}

    def rename(model) -> None:
        for subgraph in model.subgraphs:
            names = {index: _layer_path(tensor.name, scope) for index, tensor in enumerate(subgraph.tensors)}
            for operator in subgraph.operators:
                code = model.operatorCodes[operator.opcodeIndex]
                if max(code.builtinCode, code.deprecatedBuiltinCode) in weighted:
                    layer = names[operator.inputs[1]].rsplit("/", 1)[0]
                    names[operator.inputs[1]] = f"{layer}/weights"
                    if len(operator.inputs) > 2 and operator.inputs[2] >= 0:
                        names[operator.inputs[2]] = f"{layer}/bias"
            for role, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
                for position, index in enumerate(indices):
                    names[index] = role if len(indices) == 1 else f"{role}_{position}"
            seen: dict[str, int] = {}
            for index, tensor in enumerate(subgraph.tensors):
                name = names[index]
                seen[name] = seen.get(name, 0) + 1
                tensor.name = (name if seen[name] == 1 else f"{name}_{seen[name] - 1}").encode()

    return model_file.rewrite(tflite, rename)


def _layer_path(name: bytes | None, scope: str) -> str:
    """"student/quant_block1_conv1/Conv2D;student/..." -> "block1_conv1/Conv2D": the first fused node, without
    the model's scope and the "quant_" prefix TFMOT's QAT wrappers add to layer names."""
    first = (name or b"").decode("utf-8", "replace").split(";")[0]
    parts = first.split("/")
    if len(parts) > 1 and parts[0] == scope:
        parts = parts[1:]
    return "/".join(part.removeprefix("quant_") for part in parts) or "tensor"


def convert_float(model) -> bytes:
    """A float32 .tflite, to measure what the unquantized model would cost in flash."""
    with native_logs():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def check_full_int8(tflite: bytes, source: str) -> None:
    """Raise ConversionError naming the first op whose inputs or outputs are float."""
    interpreter = lite_interpreter(tflite)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only API that lists ops with their tensors
        for index in list(op["inputs"]) + list(op["outputs"]):
            tensor = tensors.get(int(index))
            if tensor is not None and tensor["dtype"] in _FLOAT_TYPES:
                raise ConversionError(
                    f"{source}: op {op['op_name']} (node {op['index']}) still computes in float "
                    f"(tensor {tensor['name']!r}); TFLite Micro's int8 kernels cannot run it. Replace the layer "
                    "that produces it with one that has an int8 kernel.")


class _CallableModule(types.ModuleType):
    # `tinykd.convert` is this module (the stage's home) and the public verb at once: a plain function of that
    # name in tinykd/__init__.py would be replaced by the module the first time anything imports it.
    def __call__(self, model, representative: np.ndarray) -> bytes:
        return convert(model, representative)

    __call__.__doc__ = convert.__doc__


sys.modules[__name__].__class__ = _CallableModule
