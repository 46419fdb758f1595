"""Keras -> full-int8 .tflite (int8 input and output), and a check that no float op is left."""

from __future__ import annotations

import numpy as np

from tinykd.errors import ConversionError
from tinykd.keras_shim import tf

# Ops that legitimately touch float tensors in a full-int8 model: none. QUANTIZE/DEQUANTIZE between int8 types
# are fine, a float one means the input or output was left in float.
_FLOAT_TYPES = {np.float32, np.float16, np.float64}


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
        tflite = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many types; all mean "cannot be int8"
        raise ConversionError(f"{model.name}: the TFLite converter could not make a full-int8 model: "
                              f"{str(error).strip().splitlines()[-1] if str(error).strip() else error!r}. "
                              "Use layers with int8 TFLite kernels (see tinykd.models).") from None
    check_full_int8(tflite, model.name)
    return tflite


def convert_float(model) -> bytes:
    """A float32 .tflite, to measure what the unquantized model would cost in flash."""
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def check_full_int8(tflite: bytes, source: str) -> None:
    """Raise ConversionError naming the first op whose inputs or outputs are float."""
    interpreter = tf.lite.Interpreter(model_content=tflite)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only API that lists ops with their tensors
        for index in list(op["inputs"]) + list(op["outputs"]):
            tensor = tensors.get(int(index))
            if tensor is not None and tensor["dtype"] in _FLOAT_TYPES:
                raise ConversionError(
                    f"{source}: op {op['op_name']} (node {op['index']}) still computes in float "
                    f"(tensor {tensor['name']!r}); TFLite Micro's int8 kernels cannot run it. Replace the layer "
                    "that produces it with one that has an int8 kernel.")
