"""How tinykd makes a Keras model quantization-aware: the TFMOT schemes, the annotation (average pooling at its
input's scale) and the audio input's pinned range.

Apart from the quantize stage so that checks before any training (`own_model.check_quantizable`) try the very
annotation QAT will use, without importing the training loop.
"""

from __future__ import annotations

import contextlib

import numpy as np

from tinykd.keras_shim import keras, tf, tfmot


def quantize_scheme(*, clustered: bool, preserve_sparsity: bool):
    """The TFMOT QAT scheme that keeps what earlier stages made: clusters, zeros, both (PCQAT) or neither."""
    if clustered:
        # preserve_sparsity=True is TFMOT's prune- and cluster-preserving QAT (PCQAT).
        return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity=preserve_sparsity)
    if preserve_sparsity:
        return tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


@keras.utils.register_keras_serializable(package="tinykd")
class SameScalePooling(tfmot.quantization.keras.QuantizeConfig):
    """Average pooling quantized at its input's scale: no output quantizer of its own.

    TFMOT's default 8-bit scheme gives AveragePooling2D an output quantizer with a learned range, but an int8
    AVERAGE_POOL_2D keeps its input's scale, so the converter appends a QUANTIZE op to reach the learned one: one
    more kernel linked into the firmware (an estimated 1.5 KB of flash) and one more op run, which post-training
    quantization never adds. Without the quantizer the pooled output keeps the input's scale, as after post-training
    quantization (and as TFMOT already does for max pooling). GlobalAveragePooling2D converts to MEAN, which
    rescales by itself, so it keeps TFMOT's quantizer.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def quantization_aware(student, scheme=None):
    """An untrained quantization-aware clone of `student` under `scheme` (None: the default 8-bit scheme), its
    average pooling kept at its input's scale (`SameScalePooling`)."""
    def annotate(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.AveragePooling2D):
            return tfmot.quantization.keras.quantize_annotate_layer(copy, SameScalePooling())
        return copy

    pooled = keras.models.clone_model(student, clone_function=annotate)
    pooled.set_weights(student.get_weights())
    annotated = tfmot.quantization.keras.quantize_annotate_model(pooled)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(
            annotated, scheme or quantize_scheme(clustered=False, preserve_sparsity=False))


def pin_input_range(qat, low: float, high: float) -> None:
    """Pin a quantization-aware model's input quantizer to [low, high] (it otherwise keeps the range it saw).

    An audio model's int8 input must be the front-end's int8 feature itself, so the converted input scale and
    zero point have to be exact: [0, 255/256] gives scale 1/256 and zero point -128. TFMOT's public
    `fix_input_output_range` rebuilds the model from its config and fixes the output range too, so the input
    quantizer's two variables are set here instead.
    """
    layer = next((layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"), None)
    ends = {v.name.split(":")[0].rsplit("_", 1)[-1]: v for v in (layer.weights if layer else [])}
    if "min" not in ends or "max" not in ends:
        raise ValueError(f"{qat.name}: no input quantizer with min/max variables to pin")
    ends["min"].assign(low)
    ends["max"].assign(high)


def calibrate_ranges(qat, inputs: np.ndarray, batch_size: int = 256) -> None:
    """Start a quantization-aware model's activation ranges where its float model's activations lie on `inputs`.

    TFMOT starts every activation quantizer at [-6, 6] and moves it by a 0.999 moving average of each training
    batch's range, so a short QAT keeps ranges near [-6, 6] whatever the activations are: a small MLP's logits
    clipped at 6 and scored 72.5% in int8 where post-training quantization of the same student scored 95.0%
    (docs/findings.md). Here one pass over `inputs`, with every moving-average and all-values quantizer passing
    its tensor through unquantized, records each tensor's range (widened to hold 0, as TFLite requires), as the
    converter's post-training calibration would; QAT's moving average then starts from it. Weight quantizers are
    left alone: every training step sets them to its weights' range.

    A recipe asks for it with `quantize.calibrate_ranges`; it is off by default, as the keyword recipe scored 1.1
    points less with it (its ReLUs liked the clipping near 6-15 that TFMOT's start gives).
    """
    ranges = {}

    def record(tensor, min_var, max_var, per_channel=False, num_bits=8, narrow_range=False, symmetric=False, **_):
        axes = list(range(len(tensor.shape) - 1)) if per_channel else None
        low, high = tf.reduce_min(tensor, axis=axes).numpy(), tf.reduce_max(tensor, axis=axes).numpy()
        if symmetric:  # widened as quant_ops.MovingAvgQuantize widens a symmetric range
            ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
            low, high = np.minimum(low, high / ratio), np.maximum(high, low * ratio)
        if id(min_var) in ranges:
            _, _, seen_low, seen_high = ranges[id(min_var)]
            low, high = np.minimum(low, seen_low), np.maximum(high, seen_high)
        ranges[id(min_var)] = (min_var, max_var, low, high)
        return tensor

    def unquantized(tensor, *_, **__):
        return tensor

    # Imported after tinykd.keras_shim (tfmot must see TF_USE_LEGACY_KERAS). TFMOT's quantizers look quant_ops'
    # functions up when called, so replacing them reaches every quantizer. The weights pass unquantized too: until
    # the first training step their quantizers hold [-6, 6], which would distort every range after them.
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    with _replaced(quant_ops, MovingAvgQuantize=record, AllValuesQuantize=record, LastValueQuantize=unquantized):
        for start in range(0, len(inputs), batch_size):
            qat(tf.constant(inputs[start:start + batch_size]), training=False)
    for min_var, max_var, low, high in ranges.values():
        min_var.assign(np.broadcast_to(np.minimum(low, 0.0), min_var.shape))
        max_var.assign(np.broadcast_to(np.maximum(high, 0.0), max_var.shape))


@contextlib.contextmanager
def _replaced(module, **functions):
    saved = {name: getattr(module, name) for name in functions}
    try:
        for name, function in functions.items():
            setattr(module, name, function)
        yield
    finally:
        for name, function in saved.items():
            setattr(module, name, function)
