"""Training inputs that stay on disk: `StreamedInputs` reads each sample when a tf.data pipeline asks for it.

A reader that streams (image_folder, speech_commands with `data.stream`) puts a `StreamedInputs` where an array
would be, in the training split only: validation and test are a bounded share of the data (`val_fraction`,
`test_fraction`) and are read into arrays, because verify, measure, export and the accuracy checks read them
whole. It behaves like the array it replaces where the pipeline touches it: `len`, `.shape`, slicing with `[:n]`,
picking rows with an index array (convert's calibration sample decodes only those files) and `np.asarray` (reads
everything: only for small data and tests).

Each sample is read by the same Python function the in-memory path uses (Pillow's decode and bilinear resize for
images, the WAV reader, repairs and silence cuts for audio), run in the pipeline through `tf.numpy_function`,
then the audio front-end runs as the same TensorFlow op with the same settings, so a streamed sample is the
in-memory one bit for bit (tests/test_data_streaming.py). TensorFlow's own decode_image/resize are not used:
their bilinear resize is not Pillow's, and the firmware contract in model_settings.h names Pillow's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

THRESHOLD_BYTES = 1 << 30  # data.stream: auto streams a training split whose float32 inputs would pass 1 GiB


def wanted(cfg, samples: int, sample_bytes: int) -> bool:
    """Whether `data.stream` asks to stream a training split of `samples` inputs of `sample_bytes` each.

    `auto` never streams with skip_unreadable, unlabeled or labeled_samples: those read every input first.
    """
    if cfg.stream != "auto":
        return cfg.stream == "always"
    if cfg.skip_unreadable or cfg.unlabeled is not None or cfg.labeled_samples is not None:
        return False
    return samples * sample_bytes > THRESHOLD_BYTES


def is_streamed(x) -> bool:
    return isinstance(x, StreamedInputs)


def model_input(x, batch_size: int):
    """What Keras `predict` takes for `x`: the array itself, or batches of a streamed split in order."""
    return x.batches(batch_size) if is_streamed(x) else x


@dataclass(frozen=True, kw_only=True)
class StreamedInputs:
    """Model inputs `read(source)` one at a time, optionally through the audio front-end, then `* scale + offset`.

    `sources` are what `read` takes (a file path, or a silence cut); `raw_shape` is the shape `read` returns.
    """

    sources: tuple
    read: Callable[[object], np.ndarray]
    raw_shape: tuple[int, ...]
    frontend: object | None = None  # tinykd.audio.FrontendConfig: clips become int8 features (model input units)
    # Training only (`examples` with a seed): `augment(raw, seed) -> raw` changes each read sample before the
    # front-end (tinykd.audio.augment), with a fresh per-example seed pair every epoch.
    augment: Callable | None = None
    # With `augment` and a front-end: > 0 computes this many augmented versions of every input's features once,
    # when training first asks, and each epoch takes one of them per input (data.augment.copies).
    copies: int = 0
    # Training only, after the front-end (or the bank): `mask(features, seed) -> features` hides bands of the
    # features, drawn afresh every epoch (data.augment.time_mask_frames, freq_mask_channels).
    mask: Callable | None = None
    scale: float = 1.0
    offset: float = 0.0
    _banks: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # training seed -> copies

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.raw_shape if self.frontend is None else (*self.frontend.feature_shape, 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    dtype = np.dtype(np.float32)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return replace(self, sources=self.sources[index])
        picks = np.atleast_1d(np.asarray(index))
        rows = self._read_rows([int(i) for i in picks])
        return rows[0] if np.ndim(index) == 0 else rows

    def __array__(self, dtype=None, copy=None):
        rows = self._read_rows(list(range(len(self))))
        return rows if dtype is None else rows.astype(dtype)

    def normalised(self, scale: float, offset: float) -> "StreamedInputs":
        """The same inputs as `x * scale + offset` (the data layer's normalisation, applied per sample)."""
        return replace(self, scale=scale, offset=offset)

    def through_frontend(self, frontend) -> "StreamedInputs":
        """Clips as the front-end's int8 features, (frames, channels, 1) float32, as tinykd.data does in memory."""
        return replace(self, frontend=frontend)

    def augmented(self, augment: Callable, copies: int = 0, mask: Callable | None = None) -> "StreamedInputs":
        """The same inputs, changed by `augment(raw, seed)` in training pipelines (`examples` with a seed): afresh
        every epoch, or, with `copies` and a front-end, from that many versions of each computed once; then, with
        `mask`, their features masked afresh every epoch."""
        return replace(self, augment=augment, copies=copies, mask=mask)

    def samples(self, order=None):
        """A tf.data pipeline of single inputs: in order, or in the order of the int64 dataset `order`."""
        from tinykd.keras_shim import tf

        indices = tf.data.Dataset.range(len(self)) if order is None else order
        return indices.map(self._sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def examples(self, targets, seed: int | None):
        """(input, targets[i]) pairs; shuffled afresh each epoch from `seed` when given, in order otherwise.

        `targets` is an array or a tuple of arrays with one row per input (labels, teacher logits). With a seed
        and an `augment`, each input is augmented with a seed pair of (a draw from the recipe's seed that changes
        every epoch, its index).
        """
        from tinykd.keras_shim import tf

        order = tf.data.Dataset.range(len(self))
        if seed is not None:
            order = order.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        table = tf.nest.map_structure(tf.constant, targets)

        def example(i, draw=None):
            sample = self._sample(i, None if draw is None else tf.stack([draw, i]))
            return sample, tf.nest.map_structure(lambda t: tf.gather(t, i), table)

        if seed is not None and self.augment is not None:
            draws = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
            if self.banked:  # the draw picks one of the versions computed once
                example = self._bank_reader(self._bank(seed), table)
            return tf.data.Dataset.zip((order, draws)).map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                                           deterministic=True)
        return order.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    @property
    def banked(self) -> bool:
        """Whether training reads precomputed augmented features (`copies`) instead of augmenting per epoch."""
        return self.copies > 0 and self.augment is not None and self.frontend is not None

    def _bank_reader(self, bank: np.ndarray, table):
        """`example(i, draw)` for `examples`: version `draw mod copies` of input i from `bank`, and its targets."""
        from tinykd.keras_shim import tf

        def example(i, draw):
            copy = tf.math.floormod(draw, self.copies)
            row = tf.numpy_function(lambda c, j: bank[c, j], [copy, i], tf.int8, stateful=False)
            row.set_shape(self.sample_shape)
            features = tf.cast(row, tf.float32)
            if self.mask is not None:  # the draw changes every epoch, so the masks do
                features = self.mask(features, tf.stack([draw, i]))
            return self._scaled(features), tf.nest.map_structure(lambda t: tf.gather(t, i), table)

        return example

    def _bank(self, seed: int) -> np.ndarray:
        """(copies, inputs, *sample_shape) int8: the front-end's features of `copies` augmented versions of every
        input, made with seeds drawn from `seed`; computed once per seed and kept."""
        from tinykd.keras_shim import tf

        if seed not in self._banks:
            draws = np.random.default_rng(seed).integers(0, np.iinfo(np.int64).max, self.copies)
            bank = np.empty((self.copies, len(self), *self.sample_shape), np.int8)
            for copy, draw in enumerate(draws):
                order = tf.data.Dataset.range(len(self))
                features = order.map(
                    lambda i: self._read_augmented(i, tf.stack([tf.constant(draw, tf.int64), i])),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                start = 0
                for rows in features.batch(256).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
                    bank[copy, start:start + len(rows)] = rows  # integers in [-128, 127]
                    start += len(rows)
            self._banks[seed] = bank
        return self._banks[seed]

    def batches(self, batch_size: int):
        """Batches of inputs in order, prefetched (what `predict` reads)."""
        from tinykd.keras_shim import tf

        return self.samples().batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def _read_rows(self, picks: list[int]) -> np.ndarray:
        from tinykd.keras_shim import tf

        if not picks:
            return np.zeros((0, *self.sample_shape), np.float32)
        order = tf.data.Dataset.from_tensor_slices(np.asarray(picks, np.int64))
        return np.concatenate(list(self.samples(order).batch(256).as_numpy_iterator()))

    def _sample(self, index, augment_seed=None, scaled: bool = True):
        x = self._read_augmented(index, augment_seed)
        if augment_seed is not None and self.mask is not None:
            x = self.mask(x, augment_seed)
        return self._scaled(x) if scaled else x

    def _read_augmented(self, index, augment_seed=None):
        """Input `index` as read, augmented with `augment_seed` when given, through the front-end if any; unscaled
        and unmasked (what a bank keeps)."""
        from tinykd.keras_shim import tf

        sources, read = self.sources, self.read
        raw = tf.numpy_function(lambda i: np.asarray(read(sources[int(i)]), np.float32), [index], tf.float32,
                                stateful=False)
        raw.set_shape(self.raw_shape)
        if augment_seed is not None:
            raw = self.augment(raw, augment_seed)
        return raw if self.frontend is None else _features(raw, self.frontend)

    def _scaled(self, x):
        from tinykd.keras_shim import tf

        if self.scale == 1.0 and self.offset == 0.0:
            return x
        return x * tf.constant(self.scale, tf.float32) + tf.constant(self.offset, tf.float32)


def _features(clip, frontend):
    """One clip (float32 in int16 units) -> the front-end's int8 feature as float32 (frames, channels, 1)."""
    from tinykd.audio import frontend as audio_frontend
    from tinykd.keras_shim import tf

    values = tf.cast(audio_frontend.clip_features(frontend)(tf.cast(clip, tf.int16)), tf.int64)
    scaled = (values * audio_frontend.INT8_MULTIPLIER + audio_frontend.INT8_DIVISOR // 2) \
        // audio_frontend.INT8_DIVISOR + audio_frontend.INT8_OFFSET
    return tf.cast(tf.clip_by_value(scaled, -128, 127), tf.float32)[..., tf.newaxis]
