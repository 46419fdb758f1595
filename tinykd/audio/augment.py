"""Training-only augmentation of keyword clips, before the front-end, as TensorFlow's speech_commands trains.

A device hears a word anywhere in its one-second window, over whatever noise the room has; a clip read from disk
always holds it at one place over one noise. So each training epoch moves every clip by a random shift of up to
`time_shift_ms` either way (the gap zero-padded, as TensorFlow's `time_shift_ms`) and mixes a random cut of a
`_background_noise_` recording into `background_frequency` of them at a gain uniform in [0, background_volume]
(TensorFlow's `background_frequency` and `background_volume`). The sum is rounded and clipped to int16, then the
front-end computes the features the model trains on, so every epoch's features are what the device would compute
from that audio. The teacher runs on the same augmented inputs (no stored soft targets are used).

Randomness is stateless: each clip's draws come from a per-example seed (tinykd.data.streaming makes them from
the recipe's seed), so a build is repeatable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tinykd.config import AugmentConfig
from tinykd.errors import ConfigError


def waveform_augmenter(augment: AugmentConfig, sample_rate_hz: int, clip_samples: int,
                       background: Sequence[np.ndarray]):
    """`apply(clip, seed) -> clip`: one float32 clip in int16 units, changed as `augment` says; `seed` is an int64
    pair for TensorFlow's stateless random ops. `background` recordings are each at least `clip_samples` long
    (tinykd.data.speech_commands pads shorter ones).

    Raises:
        ConfigError: background noise is asked for but the data has no `_background_noise_` recordings.
    """
    from tinykd.keras_shim import tf

    shift = augment.time_shift_ms * sample_rate_hz // 1000
    mixing = augment.background_frequency > 0.0
    if mixing and not background:
        raise ConfigError("data.augment.background_frequency: the data set has no _background_noise_ recordings to "
                          "mix in; add WAV files to <data.path>/_background_noise_ or set background_frequency and "
                          "background_volume to 0")
    if mixing:  # the recordings, end to end, and where each starts; every one is at least a clip long
        noise = tf.constant(np.concatenate([np.asarray(r, np.float32) for r in background]))
        starts = tf.constant(np.cumsum([0] + [len(r) for r in background[:-1]]), tf.int64)
        spans = tf.constant([len(r) - clip_samples + 1 for r in background], tf.int64)

    def apply(clip, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
        if augment.speed_perturbation:  # its own draw (folded), so the shift's and the noise's stay as they were
            speed_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 2)
            rate = tf.random.stateless_uniform([], speed_seed, 1.0 - augment.speed_perturbation,
                                               1.0 + augment.speed_perturbation)
            clip = resampled(clip, rate)
        if shift:
            amount = tf.random.stateless_uniform([], seeds[0], -shift, shift + 1, dtype=tf.int32)
            padded = tf.pad(clip, [[shift, shift]])
            clip = tf.slice(padded, [shift - amount], [clip_samples])  # a static length for the front-end
        if mixing:
            which = tf.random.stateless_uniform([], seeds[1], 0, len(background), dtype=tf.int32)
            offset = tf.random.stateless_uniform([], seeds[2], 0, tf.int64.max, dtype=tf.int64) % spans[which]
            start = starts[which] + offset
            mixed = tf.random.stateless_uniform([], seeds[3]) < augment.background_frequency
            gain = tf.random.stateless_uniform([], seeds[4], 0.0, augment.background_volume)
            clip = clip + tf.where(mixed, gain, 0.0) * tf.slice(noise, [start], [clip_samples])
        return tf.clip_by_value(tf.round(clip), -32768.0, 32767.0)

    return apply


def resampled(clip, rate):
    """`clip` played `rate` times as fast about its middle, at the same length: sample n is the clip's value at
    middle + (n - middle) * rate, linearly interpolated, zero beyond its ends. Pitch and formants move by `rate`
    too, as in Kaldi's speed perturbation (no anti-alias filter: at rates near 1 speech keeps below the new
    Nyquist)."""
    from tinykd.keras_shim import tf

    samples = clip.shape[0]
    middle = (samples - 1) / 2
    where = middle + (tf.range(samples, dtype=tf.float32) - middle) * rate
    below = tf.floor(where)
    fraction = where - below
    padded = tf.pad(clip, [[1, 2]])  # a zero either side: positions outside the clip read zeros
    index = tf.clip_by_value(tf.cast(below, tf.int32) + 1, 0, samples + 1)
    return tf.gather(padded, index) * (1.0 - fraction) + tf.gather(padded, index + 1) * fraction


def feature_masker(augment: AugmentConfig, frames: int, channels: int):
    """`apply(features, seed) -> features`: SpecAugment's masks on one example's front-end features, (frames,
    channels, 1) float32 in int8 units. Up to `time_mask_frames` consecutive frames and up to `freq_mask_channels`
    consecutive channels are set to -128, the features' floor (what the front-end gives for silence); each width is
    uniform from 0 to its limit and each place uniform where the band fits. `seed` is the example's int64 pair, the
    one the waveform augmenter takes (folded, so the masks draw apart from the shift and the noise).

    Raises:
        ConfigError: a mask as wide as the features (it could hide them all).
    """
    from tinykd.keras_shim import tf

    for key, width, size, unit in (("time_mask_frames", augment.time_mask_frames, frames, "frames"),
                                   ("freq_mask_channels", augment.freq_mask_channels, channels, "channels")):
        if width >= size:
            raise ConfigError(f"data.augment.{key}: {width} could hide all {size} {unit} of the front-end's "
                              f"features; use fewer, e.g. {max(1, size // 8)}")
    widths = (augment.time_mask_frames, augment.freq_mask_channels)

    def band(size: int, limit: int, width_seed, place_seed):
        """A boolean (size,) band of up to `limit` consecutive True."""
        width = tf.random.stateless_uniform([], width_seed, 0, limit + 1, dtype=tf.int32)
        start = tf.random.stateless_uniform([], place_seed, 0, size - width + 1, dtype=tf.int32)
        positions = tf.range(size)
        return (positions >= start) & (positions < start + width)

    def apply(features, seed):
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1), 4)
        hidden = tf.zeros([frames, channels], tf.bool)
        if widths[0]:
            hidden |= band(frames, widths[0], seeds[0], seeds[1])[:, tf.newaxis]
        if widths[1]:
            hidden |= band(channels, widths[1], seeds[2], seeds[3])[tf.newaxis, :]
        return tf.where(hidden[..., tf.newaxis], tf.constant(-128.0, features.dtype), features)

    return apply
