"""The one in-memory form of every dataset, and the seeded, stratified train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Split:
    """Model inputs `x` (float32, normalised) and integer labels `y`.

    A streamed training split's `x` is a tinykd.data.streaming.StreamedInputs, read from disk when iterated; it
    has the array's length, shape and slicing.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def head(self, count: int | None) -> "Split":
        """The first `count` samples (all when None)."""
        return self if count is None else Split(x=self.x[:count], y=self.y[:count])

    def sample_inputs(self, count: int, seed: int) -> np.ndarray:
        """`count` inputs (all when fewer) picked at random by `seed`, in the split's order (a streamed split reads
        them front to back)."""
        picks = np.random.default_rng(seed).choice(len(self), size=min(count, len(self)), replace=False)
        return self.x[np.sort(picks)]


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How the firmware turns a raw value into a model input: `input = raw * raw_scale + raw_offset`."""

    raw_scale: float
    raw_offset: float
    description: str


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """Train, validation and test splits plus what the firmware needs to know about inputs and classes.

    `fingerprint` changes whenever the files, the split or the sample limits change; stage caching keys on it.
    `skipped` lists the files left out because they could not be read (`data.skip_unreadable: true`).
    `repairs` counts what a reader changed to make inputs fit, as (what, files) pairs, e.g. ("resampled", 3).
    `unlabeled` holds inputs the teacher labels with soft targets for distillation; no split ever contains them.
    """

    train: Split
    val: Split
    test: Split
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    source: str
    fingerprint: str
    skipped: tuple[str, ...] = ()
    repairs: tuple[tuple[str, int], ...] = ()
    test_audio: np.ndarray | None = None  # the test clips before the front-end (golden vectors, parity checks)
    unlabeled: np.ndarray | None = None  # model inputs without labels (data.unlabeled, data.labeled_samples)
    background: tuple[np.ndarray, ...] = ()  # audio: the _background_noise_ recordings (data.augment mixes them in)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def split_stratified(x: np.ndarray, y: np.ndarray, *, val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[Split, Split, Split]:
    """Train, validation and test from one pool: seeded, each class keeping its share in every split."""
    rest, test = split_train_val(x, y, test_fraction, seed)
    train, val = split_train_val(rest.x, rest.y, val_fraction / (1.0 - test_fraction), seed + 1)
    return train, val, test


def split_train_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded split that keeps every class's share the same in train and validation."""
    rng = np.random.default_rng(seed)
    val_index = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        val_index.append(members[: int(round(len(members) * val_fraction))])
    is_val = np.zeros(len(y), dtype=bool)
    is_val[np.concatenate(val_index)] = True
    train_index = rng.permutation(np.flatnonzero(~is_val))
    val_index = rng.permutation(np.flatnonzero(is_val))
    return Split(x=x[train_index], y=y[train_index]), Split(x=x[val_index], y=y[val_index])
