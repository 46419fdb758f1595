"""How tinykd makes a Keras model quantization-aware: the TFMOT schemes, the annotation (average pooling at its
input's scale) and the audio input's pinned range.

Apart from the quantize stage so that checks before any training (`own_model.check_quantizable`) try the very
annotation QAT will use, without importing the training loop.
"""

from __future__ import annotations

from tinykd.keras_shim import keras, tfmot


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
