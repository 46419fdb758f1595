"""The keyword-spotting front-end: TFLite Micro's audio microfrontend, run through the TensorFlow op that wraps
the same C library the micro_speech firmware links, so training features come from the code the device runs.

A clip of int16 samples becomes uint16 features (frames x channels), exactly the device's `FrontendOutput`
values; `to_int8` is the one formula that turns them into the model's int8 input, and `to_model_input` the float
the model is trained on, chosen so that the converted model's input quantization gives back the same int8.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# The settings are part of the recipe's schema (tinykd.config, which imports nothing of tinykd's but errors).
from tinykd.config import FRONTEND_KINDS as KINDS, FrontendConfig  # noqa: F401 - part of tinykd.audio's API
from tinykd.errors import DataError


# uint16 feature -> int8 input, as micro_speech's firmware does it in 32-bit integer arithmetic
# (tflite-micro, tensorflow/lite/micro/examples/micro_speech/micro_features/micro_features_generator.cc):
#   int8 = clamp((uint16 * 256 + 666 / 2) / 666 - 128, -128, 127)     (integer division truncates)
# 666 is that file's `static_cast<int32_t>((25.6f * 26.0f) + 0.5f)`: training divided features by 25.6 into
# roughly 0..26, and 26 spans the 256 int8 steps. Division by 666 with 333 added rounds half up.
INT8_MULTIPLIER = 256
INT8_DIVISOR = 666
INT8_OFFSET = -128

# The model's float input is (int8 + 128) / 256, in [0, 255/256]: the int8 feature with scale 1/256 and zero
# point -128. Both are exact in float32, so TFLite's quantize(x) = round(x / scale) + zero_point gives back the
# int8 feature exactly; on the device the int8 feature is copied into the input tensor with no float step.
# A model calibrated on to_model_input() data spanning 0..255/256 gets these parameters by itself.
INPUT_SCALE = 1.0 / 256.0
INPUT_ZERO_POINT = -128

# Clips per call of the op's map_fn: bounds the memory of one call; larger batches were not faster.
_BATCH_CLIPS = 512


def features(waveforms: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """uint16 features (N, frames, channels) of int16-valued clips (N, clip_samples): the device's values.

    The clips may be any integer or float dtype as long as every value is a whole number in -32768..32767
    (tinykd.data gives float32 in int16 units). Each clip starts from a fresh front-end state (noise estimates
    and PCAN at their initial values), as the op does; a device that streams must reset the state per clip
    to reproduce them exactly.

    Raises:
        DataError: the waveforms are not 2-D, not cfg.clip_samples long, or not int16 values.
    """
    clips = np.asarray(waveforms)
    if clips.ndim != 2 or clips.shape[1] != cfg.clip_samples:
        raise DataError(f"waveforms have shape {clips.shape}; the front-end expects (clips, {cfg.clip_samples}): "
                        f"{cfg.clip_ms} ms at {cfg.sample_rate_hz} Hz, padded or cut to length")
    run = _batch_function(cfg)
    out = np.empty((len(clips), *cfg.feature_shape), np.uint16)
    for start in range(0, len(clips), _BATCH_CLIPS):
        out[start:start + _BATCH_CLIPS] = run(_as_int16(clips[start:start + _BATCH_CLIPS], start)).numpy()
    return out


def to_int8(features_uint16: np.ndarray) -> np.ndarray:
    """The int8 model input of uint16 features: clamp((u * 256 + 333) // 666 - 128, -128, 127), see INT8_DIVISOR.

    Raises:
        DataError: the values are not integers in [0, 65535].
    """
    values = np.asarray(features_uint16)
    if not np.issubdtype(values.dtype, np.integer) or (values.size and (values.min() < 0 or values.max() > 65535)):
        raise DataError(f"front-end features must be uint16 values (0..65535), got dtype {values.dtype}")
    scaled = (values.astype(np.int64) * INT8_MULTIPLIER + INT8_DIVISOR // 2) // INT8_DIVISOR + INT8_OFFSET
    return np.clip(scaled, -128, 127).astype(np.int8)


def to_model_input(features_int8: np.ndarray) -> np.ndarray:
    """The float32 the model is trained on: (int8 - INPUT_ZERO_POINT) * INPUT_SCALE = (int8 + 128) / 256."""
    return (np.asarray(features_int8, np.float32) - INPUT_ZERO_POINT) * np.float32(INPUT_SCALE)


def _as_int16(clips: np.ndarray, first_clip: int) -> np.ndarray:
    if clips.dtype == np.int16:
        return clips
    if not (np.issubdtype(clips.dtype, np.integer) or np.issubdtype(clips.dtype, np.floating)):
        raise DataError(f"waveforms are {clips.dtype}; the front-end reads int16 samples")
    if clips.size and (clips.min() < -32768 or clips.max() > 32767 or not np.all(np.round(clips) == clips)):
        raise DataError(f"waveforms from clip {first_clip} on are not whole numbers in -32768..32767 (int16 "
                        "units); convert float audio in [-1, 1] with np.round(x * 32767) first")
    return clips.astype(np.int16)


@functools.lru_cache(maxsize=8)
def clip_features(cfg: FrontendConfig):
    """The op on one 1-D int16 clip tensor -> uint16 features (frames, channels), usable inside tf.data."""
    from tinykd.keras_shim import tf

    op = _load_op()
    settings = dict(
        sample_rate=cfg.sample_rate_hz, window_size=cfg.window_size_ms, window_step=cfg.window_stride_ms,
        num_channels=cfg.num_channels, upper_band_limit=cfg.upper_band_limit_hz,
        lower_band_limit=cfg.lower_band_limit_hz, smoothing_bits=cfg.smoothing_bits,
        even_smoothing=cfg.even_smoothing, odd_smoothing=cfg.odd_smoothing,
        min_signal_remaining=cfg.min_signal_remaining, enable_pcan=cfg.enable_pcan,
        pcan_strength=cfg.pcan_strength, pcan_offset=cfg.pcan_offset, gain_bits=cfg.gain_bits,
        enable_log=cfg.enable_log, scale_shift=cfg.scale_shift,
        # No context stacking or frame skipping, and no division: the output is FrontendOutput.values as is.
        left_context=0, right_context=0, frame_stride=1, zero_padding=False, out_scale=1, out_type=tf.uint16)

    def run(clip):
        features = op.audio_microfrontend(clip, **settings)
        features.set_shape(cfg.feature_shape)
        return features

    return run


@functools.lru_cache(maxsize=8)
def _batch_function(cfg: FrontendConfig):
    """A traced function running the op over a batch of clips; one per config, as the op's settings are attrs."""
    from tinykd.keras_shim import tf

    one = clip_features(cfg)
    output_spec = tf.TensorSpec(cfg.feature_shape, tf.uint16)

    @tf.function(input_signature=[tf.TensorSpec([None, cfg.clip_samples], tf.int16)])
    def run(clips):
        # The op reads one 1-D clip; parallel iterations let TensorFlow spread clips over the cores.
        return tf.map_fn(one, clips, fn_output_signature=output_spec, parallel_iterations=16)

    return run


@functools.cache
def _load_op():
    """TensorFlow's audio_microfrontend kernel library (the microfrontend C code), loaded once."""
    from tinykd.keras_shim import tf

    # The same .so that tensorflow.lite.experimental.microfrontend's Python wrapper loads.
    library = Path(tf.__file__).parent / "lite/experimental/microfrontend/python/ops/_audio_microfrontend_op.so"
    return tf.load_op_library(str(library))
