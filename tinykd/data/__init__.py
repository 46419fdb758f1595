"""The data layer: every source becomes the same `Dataset`, so the rest of the pipeline never asks where data came from.

A reader (`READERS[data.format]`) returns the splits in raw units (0-255 pixels, sensor values) with its default
preprocessing; `load` then applies the recipe's normalisation and sample limits, in one place for every source, so
`model_settings.h` can state exactly what the firmware must feed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinykd.config import DataConfig
from tinykd.data.dataset import Dataset, Preprocessing, Split, split_stratified, split_train_val
from tinykd.errors import ConfigError

__all__ = ["Dataset", "Preprocessing", "Split", "load", "split_stratified", "split_train_val", "READERS"]


def _fashion_mnist(cfg, seed, search_dirs):
    from tinykd.data import fashion_mnist

    return fashion_mnist.read(cfg, seed, search_dirs)


def _image_folder(cfg, seed, search_dirs):
    from tinykd.data import image_folder

    return image_folder.read(cfg, seed)


def _arrays(cfg, seed, search_dirs):
    from tinykd.data import arrays

    return arrays.read(cfg, seed)


def _speech_commands(cfg, seed, search_dirs):
    from tinykd.data import speech_commands

    return speech_commands.read(cfg, seed)


READERS = {"fashion_mnist": _fashion_mnist, "image_folder": _image_folder, "arrays": _arrays,
           "speech_commands": _speech_commands}


def load(cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...] = (), frontend=None) -> Dataset:
    """Read the dataset a recipe names, cut to the recipe's sample limits, through the front-end, normalised.

    Args:
        cfg: the recipe's `data:` section.
        seed: seeds every split the reader makes.
        search_dirs: extra folders to look in (the CLI passes `$TINYKD_DATA`).
        frontend: the recipe's `frontend:` section (tinykd.audio.FrontendConfig) for audio: clips become the
            microfrontend's int8 features, and the model's input is `to_model_input` of them.

    Raises:
        DataError: the data is missing or inconsistent; the message names the file or key and the fix.
        ConfigError: the recipe asks for something this data cannot do (augmenting non-images).
    """
    if cfg.format not in READERS:
        raise ConfigError(f"data.format: unknown format {cfg.format!r}; known: {', '.join(sorted(READERS))}")
    raw = READERS[cfg.format](cfg, seed, search_dirs)
    val_count = None if cfg.max_train_samples is None else max(32, int(cfg.max_train_samples * cfg.val_fraction))
    raw = replace(raw, train=raw.train.head(cfg.max_train_samples), val=raw.val.head(val_count),
                  test=raw.test.head(cfg.max_test_samples))
    if frontend is not None:
        raw = _through_frontend(raw, frontend)
    if cfg.augment is not None and cfg.augment.active and len(raw.input_shape) != 3:
        raise ConfigError(f"data.augment: flips, shifts and crops need images (height, width, channels), but "
                          f"{raw.source} gives inputs of shape {raw.input_shape}; remove data.augment")
    preprocessing = raw.preprocessing
    if cfg.normalize is not None:
        preprocessing = replace(preprocessing, raw_scale=cfg.normalize.scale, raw_offset=cfg.normalize.offset)
    limits = {"seed": seed, "train": cfg.max_train_samples, "test": cfg.max_test_samples,
              "scale": preprocessing.raw_scale, "offset": preprocessing.raw_offset}
    fingerprint = hashlib.sha256((raw.fingerprint + json.dumps(limits, sort_keys=True)).encode()).hexdigest()[:16]

    def normalised(split: Split) -> Split:
        if preprocessing.raw_scale == 1.0 and preprocessing.raw_offset == 0.0:
            return split  # raw units are the model's units: no copy (46k clips of audio are 3 GB)
        return Split(x=split.x * preprocessing.raw_scale + preprocessing.raw_offset, y=split.y)

    return replace(raw, train=normalised(raw.train), val=normalised(raw.val), test=normalised(raw.test),
                   preprocessing=preprocessing, fingerprint=fingerprint)


def _through_frontend(raw: Dataset, frontend) -> Dataset:
    """Clips -> microfrontend uint16 -> int8 features (the firmware's input) -> the float the model trains on.

    The model's input is (int8 + 128) / 256, so `raw` for the firmware is the int8 feature itself and its
    quantized input tensor receives exactly that int8 (tinykd.audio.INPUT_SCALE and INPUT_ZERO_POINT).
    """
    from tinykd.audio import INPUT_SCALE, INPUT_ZERO_POINT, features, to_int8

    def split_features(split: Split) -> Split:
        return Split(x=to_int8(features(split.x, frontend)).astype(np.float32)[..., np.newaxis], y=split.y)

    # The int8 feature dequantized with the model's fixed input parameters: (q - zero_point) * scale.
    preprocessing = Preprocessing(
        raw_scale=INPUT_SCALE, raw_offset=-INPUT_ZERO_POINT * INPUT_SCALE,
        description=(f"int8 audio features: TFLite Micro's microfrontend on {frontend.clip_ms} ms of "
                     f"{frontend.sample_rate_hz} Hz int16 audio (settings in model_settings.h), "
                     "int8 = clamp((uint16 * 256 + 333) / 666 - 128, -128, 127)"))
    settings = hashlib.sha256(json.dumps(dataclasses.asdict(frontend), sort_keys=True).encode()).hexdigest()
    return replace(raw, train=split_features(raw.train), val=split_features(raw.val),
                   test=split_features(raw.test), test_audio=raw.test.x, preprocessing=preprocessing,
                   fingerprint=f"{raw.fingerprint}:{settings[:16]}")
