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

from tinykd.config import UNLABELED_REST, DataConfig
from tinykd.data import streaming
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
    from tinykd.data import keyword_stream, keywords, speech_commands

    # The synthesizer writes the reader's layout, so it imports the reader; the reader never imports it.
    root = Path(cfg.path).expanduser()
    if cfg.synthesize and speech_commands.absent(root):
        keywords.synthesize(root, seed=seed, extra_train_speakers=cfg.extra_train_speakers,
                            held_out=cfg.held_out_speakers, flite_clip_factor=cfg.flite_clip_factor,
                            train_word_clips=cfg.word_clips,
                            extend=keyword_stream.stream_windows(cfg.train_stream_minutes, seed))
    elif cfg.synthesize:
        keywords.check_made_with(root, cfg.extra_train_speakers, cfg.held_out_speakers, cfg.flite_clip_factor,
                                 cfg.train_stream_minutes, cfg.word_clips)
    return speech_commands.read(cfg, seed)


READERS = {"fashion_mnist": _fashion_mnist, "image_folder": _image_folder, "arrays": _arrays,
           "speech_commands": _speech_commands}


# In a fingerprint only when set, so recipes written before these keys keep theirs (and their cached teachers).
AUGMENT_KEYS_ADDED_LATER = ("copies", "speed_perturbation", "time_mask_frames", "freq_mask_channels")


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
    raw = _with_unlabeled(raw, cfg, seed, search_dirs)
    if frontend is not None:
        raw = _through_frontend(raw, frontend, cfg.augment)
    if cfg.augment is not None and cfg.augment.image and len(raw.input_shape) != 3:
        raise ConfigError(f"data.augment: flips, shifts and crops need images (height, width, channels), but "
                          f"{raw.source} gives inputs of shape {raw.input_shape}; remove data.augment")
    preprocessing = raw.preprocessing
    if cfg.normalize is not None:
        preprocessing = replace(preprocessing, raw_scale=cfg.normalize.scale, raw_offset=cfg.normalize.offset)
    limits = {"seed": seed, "train": cfg.max_train_samples, "test": cfg.max_test_samples,
              "scale": preprocessing.raw_scale, "offset": preprocessing.raw_offset}
    if cfg.labeled_samples is not None:  # added only when used, so other fingerprints (and cached teachers) stay
        limits["labeled"] = cfg.labeled_samples
    if cfg.augment is not None and cfg.augment.active:  # what every training stage sees, the teacher's too
        limits["augment"] = {key: value for key, value in dataclasses.asdict(cfg.augment).items()
                             if value or key not in AUGMENT_KEYS_ADDED_LATER}
    if raw.unlabeled is not None:
        limits["unlabeled"] = hashlib.sha256(np.ascontiguousarray(raw.unlabeled).tobytes()).hexdigest()[:16]
    fingerprint = hashlib.sha256((raw.fingerprint + json.dumps(limits, sort_keys=True)).encode()).hexdigest()[:16]

    def normalised(split: Split) -> Split:
        if preprocessing.raw_scale == 1.0 and preprocessing.raw_offset == 0.0:
            return split  # raw units are the model's units: no copy (46k clips of audio are 3 GB)
        if streaming.is_streamed(split.x):  # applied per sample in the pipeline, in the same float32 arithmetic
            return Split(x=split.x.normalised(preprocessing.raw_scale, preprocessing.raw_offset), y=split.y)
        return Split(x=split.x * preprocessing.raw_scale + preprocessing.raw_offset, y=split.y)

    unlabeled = None
    if raw.unlabeled is not None:
        unlabeled = normalised(Split(x=raw.unlabeled, y=np.zeros(len(raw.unlabeled), dtype=np.int64))).x
    return replace(raw, train=normalised(raw.train), val=normalised(raw.val), test=normalised(raw.test),
                   preprocessing=preprocessing, fingerprint=fingerprint, unlabeled=unlabeled)


def _with_unlabeled(raw: Dataset, cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...]) -> Dataset:
    """Keep `data.labeled_samples` labelled training samples (a seeded, stratified choice), and add unlabelled
    inputs: every sample found at `data.unlabeled` (read like `data.path`, labels dropped), or with
    `data.unlabeled: rest` the training samples beyond `data.labeled_samples`."""
    pools = []
    train = raw.train
    if cfg.labeled_samples is not None:
        if cfg.labeled_samples >= len(train):
            raise ConfigError(f"data.labeled_samples: {cfg.labeled_samples} is not fewer than the "
                              f"{len(train)} training samples, so nothing would be unlabelled; lower it")
        kept, rest = split_train_val(train.x, train.y, 1.0 - cfg.labeled_samples / len(train), seed + 7)
        # Per-class rounding can miss the count by a few; move those across so exactly labeled_samples stay.
        x, y = np.concatenate([kept.x, rest.x]), np.concatenate([kept.y, rest.y])
        train = Split(x=x[:cfg.labeled_samples], y=y[:cfg.labeled_samples])
        if cfg.unlabeled == UNLABELED_REST:
            pools.append(x[cfg.labeled_samples:])
    if cfg.unlabeled is not None and cfg.unlabeled != UNLABELED_REST:
        if not Path(cfg.unlabeled).exists():
            raise ConfigError(f"data.unlabeled: {cfg.unlabeled} does not exist; point it at unlabelled data in the "
                              f"same format as data.path ({cfg.format}), or remove the key")
        found = _read_unlabeled(cfg, seed, search_dirs)
        if tuple(found[0].shape[1:]) != tuple(raw.train.x.shape[1:]):
            raise ConfigError(f"data.unlabeled: {cfg.unlabeled} gives inputs of shape {tuple(found[0].shape[1:])}, "
                              f"but data.path gives {tuple(raw.train.x.shape[1:])}; make them match")
        pools += found
    if not pools:
        return replace(raw, train=train)
    return replace(raw, train=train, unlabeled=np.concatenate(pools).astype(raw.train.x.dtype, copy=False))


def _read_unlabeled(cfg: DataConfig, seed: int, search_dirs: tuple[Path, ...]) -> list[np.ndarray]:
    """Every input at `data.unlabeled`: for arrays, an .npz with any of x, x_train, x_val, x_test (labels not
    needed); for the other formats, the same layout as `data.path` read by the same reader, labels dropped."""
    path = Path(cfg.unlabeled)
    if cfg.format == "arrays":
        from tinykd.data import arrays

        stored = arrays.open_archive(path)
        found = [np.asarray(stored[key]) for key in ("x", "x_train", "x_val", "x_test") if key in stored]
        if not found:
            raise ConfigError(f"data.unlabeled: {path} has none of the arrays x, x_train, x_val, x_test; save the "
                              "unlabelled inputs with np.savez(path, x=...)")
        return found
    other = READERS[cfg.format](replace(cfg, path=str(path), unlabeled=None, labeled_samples=None, synthesize=False,
                                        max_train_samples=None, max_test_samples=None), seed, search_dirs)
    return [split.x for split in (other.train, other.val, other.test) if len(split)]


def _through_frontend(raw: Dataset, frontend, augment=None) -> Dataset:
    """Clips -> microfrontend uint16 -> int8 features (the firmware's input) -> the float the model trains on.

    The model's input is (int8 + 128) / 256, so `raw` for the firmware is the int8 feature itself and its
    quantized input tensor receives exactly that int8 (tinykd.audio.INPUT_SCALE and INPUT_ZERO_POINT).
    With audio augmentation (`augment.audio`) the training clips stay clips, in memory or on disk, and the
    pipeline computes their features from augmented audio every epoch (tinykd.audio.augment), or once for
    `augment.copies` versions of each clip.
    """
    from tinykd.audio import INPUT_SCALE, INPUT_ZERO_POINT, features, to_int8
    from tinykd.audio.augment import feature_masker, waveform_augmenter

    def split_features(split: Split) -> Split:
        if streaming.is_streamed(split.x):  # the same op and settings, per clip in the pipeline
            return Split(x=split.x.through_frontend(frontend), y=split.y)
        return Split(x=to_int8(features(split.x, frontend)).astype(np.float32)[..., np.newaxis], y=split.y)

    # The int8 feature dequantized with the model's fixed input parameters: (q - zero_point) * scale.
    preprocessing = Preprocessing(
        raw_scale=INPUT_SCALE, raw_offset=-INPUT_ZERO_POINT * INPUT_SCALE,
        description=(f"int8 audio features: TFLite Micro's microfrontend on {frontend.clip_ms} ms of "
                     f"{frontend.sample_rate_hz} Hz int16 audio (settings in model_settings.h), "
                     "int8 = clamp((uint16 * 256 + 333) / 666 - 128, -128, 127)"))
    settings = hashlib.sha256(json.dumps(dataclasses.asdict(frontend), sort_keys=True).encode()).hexdigest()
    unlabeled = None
    if raw.unlabeled is not None:
        unlabeled = split_features(Split(x=raw.unlabeled, y=np.zeros(len(raw.unlabeled), dtype=np.int64))).x
    train = raw.train
    if augment is not None and augment.audio:
        if not streaming.is_streamed(train.x):  # rows of the array, read per example like files
            train = Split(x=streaming.StreamedInputs(sources=tuple(range(len(train))), read=train.x.__getitem__,
                                                     raw_shape=tuple(train.x.shape[1:])), y=train.y)
        apply = waveform_augmenter(augment, frontend.sample_rate_hz, frontend.clip_samples, raw.background)
        mask = feature_masker(augment, *frontend.feature_shape) if augment.masks else None
        train = Split(x=train.x.augmented(apply, copies=augment.copies, mask=mask), y=train.y)
    return replace(raw, train=split_features(train), val=split_features(raw.val),
                   test=split_features(raw.test), test_audio=raw.test.x, preprocessing=preprocessing,
                   fingerprint=f"{raw.fingerprint}:{settings[:16]}", unlabeled=unlabeled)
