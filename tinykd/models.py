"""The architecture zoo: each builder takes its input shape and class count from the data and returns logits.

Layers have stable names (`block2_conv1`, `block2_conv1_relu`, `features`, `logits`) so a recipe can name them for
hint distillation. Only ops with int8 kernels in TFLite Micro and CMSIS-NN are used.
"""

from __future__ import annotations

import numpy as np

from tinykd import own_model
# The names a recipe may give live with the recipe's schema, which checks them at load.
from tinykd.config import ARCHITECTURES, HEADS, ModelConfig  # noqa: F401 - part of tinykd.models' API

# Batch-norm statistics settle within ~30 steps at 0.9 (Keras' 0.99 needs ~300), so small datasets and short
# fine-tuning runs evaluate with the statistics they trained with.
BATCH_NORM_MOMENTUM = 0.9


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, name: str, seed: int | None = None,
          key: str = "model"):
    """A fresh, untrained Keras model that maps `input_shape` inputs to `num_classes` logits.

    With `path` or `factory` in `cfg` it is your own model instead (tinykd.own_model; it keeps its own name, and
    errors name the recipe section `key`, e.g. "distill.student").

    The input's rank picks the layers: `(features,)` gets dense layers (`filters` are their widths),
    `(steps, channels)` 1-D convolutions (as (3, 1) kernels), `(height, width, channels)` 2-D convolutions.
    With `seed`, the initial weights are that seed's: the same on every run, whatever ran before in the process
    (a resumed build skips stages, so the random state left by earlier stages cannot be relied on).
    """
    from tinykd.keras_shim import keras

    if own_model.is_own(cfg):
        return own_model.build(cfg, input_shape, num_classes, key, seed)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    spatial_dims = len(input_shape) - 1
    if cfg.arch == "mlp" or spatial_dims == 0:
        x = layers.Flatten(name="flatten_input")(x) if spatial_dims else x
        for index, units in enumerate(widths(cfg), start=1):
            x = layers.Dense(units, name=f"dense{index}")(x)
            x = layers.ReLU(name=f"dense{index}_relu")(x)
    else:
        if spatial_dims == 1:
            # Sequences run as (steps, 1, channels) images with (3, 1) kernels: TFMOT has no QAT for Conv1D,
            # and TFLite converts Conv1D to the same CONV_2D anyway.
            x = layers.Reshape((input_shape[0], 1, input_shape[1]), name="as_image")(x)
        kernel, window = ((3, 1), (2, 1)) if spatial_dims == 1 else ((3, 3), (2, 2))
        for block, filters in enumerate(widths(cfg), start=1):
            for conv in range(1, cfg.convs_per_block + 1):
                first = block == 1 and conv == 1
                x = _conv_unit(layers, x, cfg.arch, filters, f"block{block}_conv{conv}",
                               tuple(cfg.first_kernel or kernel) if first else kernel,
                               strides=tuple(cfg.first_strides) if first else (1, 1), first=first)
            if block < len(cfg.filters) and cfg.pool_between_blocks:
                x = layers.MaxPooling2D(window, name=f"block{block}_pool")(x)
        x = layers.Activation("linear", name="features")(x)
        if cfg.head == "gap":
            x = layers.GlobalAveragePooling2D(name="gap")(x)
        elif cfg.head == "avgpool":
            x = layers.AveragePooling2D(tuple(x.shape[1:3]), name="avgpool")(x)
        elif cfg.head == "pool_flatten":
            x = layers.MaxPooling2D(window, name="head_pool")(x)
        if cfg.dense_units or cfg.head == "gap":
            x = layers.Flatten(name="flatten")(x)
    if cfg.dense_units:
        x = layers.Dense(cfg.dense_units, name="hidden")(x)
        x = layers.ReLU(name="hidden_relu")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    if len(x.shape) == 4:
        # The classifier as a convolution over the whole feature map: the same weights and MACs as flatten + dense,
        # but it converts to CONV_2D, whose int8 kernels agree bit for bit in TFLite Micro and TFLite, while
        # TFLite's reference FULLY_CONNECTED requantizes in float and can differ from TFLM's by 1 LSB.
        x = layers.Conv2D(num_classes, tuple(x.shape[1:3]), name="classifier")(x)
        outputs = layers.Flatten(name="logits")(x)
    else:
        outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def widths(cfg: ModelConfig) -> tuple[int, ...]:
    """The channel count of every block: `filters` scaled by `width_multiplier`, at least 1 each."""
    return tuple(max(1, round(f * cfg.width_multiplier)) for f in cfg.filters)


def _conv_unit(layers, x, arch: str, filters: int, name: str, kernel: tuple[int, int], *,
               strides: tuple[int, int], first: bool):
    """Conv (or depthwise-separable conv), batch norm, ReLU: the pattern TFMOT folds and TFLM fuses."""
    if arch == "ds_cnn" and not first:
        x = layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_dw_bn")(x)
        x = layers.ReLU(name=f"{name}_dw_relu")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def count_macs(model) -> int:
    """Multiply-accumulates of one inference: conv Hout*Wout*Cout*Kh*Kw*Cin, depthwise Hout*Wout*C*Kh*Kw, dense in*out.

    Same convention as the MLPerf Tiny figures, so Keras and .tflite counts compare directly.
    """
    from tinykd.keras_shim import keras

    macs = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # Output positions x channels x kernel taps (one input channel per output channel).
            macs += int(np.prod(layer.output_shape[1:])) * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(layer.output_shape[1:])) * int(np.prod(layer.kernel_size)) * layer.input_shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            macs += int(layer.input_shape[-1]) * layer.units
    return int(macs)


def _leaf_layers(model):
    for layer in model.layers:
        inner = getattr(layer, "layer", None)  # TFMOT wrappers (pruning, quantization) hold the real layer
        if hasattr(layer, "layers"):
            yield from _leaf_layers(layer)
        elif inner is not None:
            yield inner
        else:
            yield layer


def clone(model):
    """An independent copy of a Keras model, weights included."""
    from tinykd.keras_shim import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def load_model(path):
    """Load any model tinykd saved, including quantization-aware ones."""
    from tinykd.keras_shim import keras, tfmot

    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)
