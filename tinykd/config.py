"""Recipes: frozen, keyword-only dataclasses, one per YAML section, validated once at load.

Every error names the file and the dotted key and says how to fix it, e.g.
`pipelines/smoke.yaml: distill.temperatur: unknown key (did you mean 'temperature'?)`.
After loading, no stage re-checks its config.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.machinery
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinykd.errors import ConfigError

# What `--smoke` changes in any recipe: a few hundred samples and one epoch per stage, so a build takes seconds
# and still runs every stage on real data.
SMOKE_OVERRIDES = {
    "data.max_train_samples": 1024,
    "data.max_test_samples": 256,
    "teacher.epochs": 1,
    "distill.epochs": 1,
    "prune.epochs": 1,
    "cluster.epochs": 1,
    "quantize.epochs": 1,
    "convert.representative_samples": 32,
    "search.min_epochs": 1,
    "search.max_epochs": 2,
}

# Data formats tinykd.data has a reader for (tinykd.data.READERS, one per name).
DATA_FORMATS = ("fashion_mnist", "image_folder", "arrays", "speech_commands")
STREAM_MODES = ("auto", "always", "never")  # data.stream (true is always, false never): see tinykd.data.streaming
STREAMED_FORMATS = ("image_folder", "speech_commands")
HELD_OUT_SPLITS = ("random", "matched")  # data.held_out_speakers: see tinykd.data.keywords.split_speakers
MAX_TRAIN_FRACTION = 4.0  # data.train_unknown_fraction / train_silence_fraction: negatives per keyword clip

# The architecture zoo (tinykd.models) and its classifier heads.
ARCHITECTURES = ("cnn", "ds_cnn", "mlp")
# gap: global average pooling (converts to MEAN, whose int8 kernels in TFLite Micro and in TFLite's reference
#      kernels round differently: outputs can differ by 1 LSB, so a near-tie can flip the top-1 class).
# flatten / pool_flatten: classify the whole last feature map (max-pooled by 2 first for pool_flatten) with one
#      convolution; bit-exact in both runtimes unless a hidden dense layer (dense_units) brings FULLY_CONNECTED.
# avgpool: average the whole last feature map with AVERAGE_POOL_2D (the same numbers as gap; bit-identical in
#      both runtimes on every KWS test clip so far, where MEAN was not), then classify with a 1x1 convolution.
HEADS = ("gap", "avgpool", "flatten", "pool_flatten")


class _Invalid(ValueError):
    """Raised by a section's `__post_init__`; the loader adds the file and key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _Invalid(key, message)


def word_counts(pairs: typing.Iterable[str]) -> dict[str, int]:
    """["off=6", "up=6"] -> {"off": 6, "up": 6}, for data.train_word_clips and `tinykd data keywords
    --train-word-clips`. ValueError naming the first pair that is not word=N with N at least 1, or a word again."""
    counts = {}
    for pair in pairs:
        word, _, count = pair.partition("=")
        if not word or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{pair!r} is not \"word=N\" with N at least 1; write e.g. off=6")
        if word in counts:
            raise ValueError(f"names a word twice ({word}); give each word one count")
        counts[word] = int(count)
    return counts


@dataclass(frozen=True, kw_only=True)
class NormalizeConfig:
    """How a raw value (a 0-255 pixel, a sensor reading) becomes a model input: `input = raw * scale + offset`."""

    scale: float
    offset: float = 0.0

    def __post_init__(self):
        _require(self.scale != 0.0, "scale", "must not be 0 (e.g. 0.00392156862745098 for 1/255)")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Training-only augmentation; validation, test, calibration and the device never see it.

    Images: flips, shifts and crops of the input. Audio (format speech_commands), as TensorFlow's speech_commands
    trains: each clip moves by up to `time_shift_ms` either way (zero-padded), and `background_frequency` of the
    clips get a random cut of a `_background_noise_` recording at a gain drawn from [0, background_volume]; the
    front-end then runs on the changed clip, so every epoch sees new features (tinykd.audio.augment).

    Audio `copies`: 0 runs the front-end on freshly changed clips every epoch; N > 0 computes N changed versions
    of every training clip once, when training first asks (N front-end passes over the training clips, kept in
    memory as int8: N x clips x frames x channels bytes), and each epoch takes one of them per clip at random.
    The front-end then costs N passes per build instead of one per epoch.

    Audio `speed_perturbation` s: each clip first plays at a rate drawn from [1 - s, 1 + s] about its middle (pitch
    and formants move with it, as another speaker's would; Kaldi's speed perturbation).

    Audio `time_mask_frames` and `freq_mask_channels` (SpecAugment): after the front-end, every training example
    gets up to that many consecutive frames and channels of its features set to the floor (-128, silence), each
    width and place drawn afresh per example and epoch; with `copies` they change every epoch at no front-end cost.
    """

    flip_horizontal: bool = False
    shift_fraction: float = 0.0
    crop_fraction: float = 0.0
    time_shift_ms: int = 0
    background_frequency: float = 0.0
    background_volume: float = 0.0
    copies: int = 0
    speed_perturbation: float = 0.0
    time_mask_frames: int = 0
    freq_mask_channels: int = 0

    def __post_init__(self):
        _require(0.0 <= self.shift_fraction < 0.5, "shift_fraction", "must be in [0, 0.5), e.g. 0.1")
        _require(0.0 <= self.crop_fraction < 0.5, "crop_fraction", "must be in [0, 0.5), e.g. 0.1")
        _require(0 <= self.time_shift_ms <= 500, "time_shift_ms", "must be from 0 to 500 ms, e.g. 100")
        _require(0.0 <= self.background_frequency <= 1.0, "background_frequency",
                 "must be in [0, 1]: the share of training clips that get background noise, e.g. 0.8")
        _require(0.0 <= self.background_volume <= 1.0, "background_volume",
                 "must be in [0, 1]: the largest gain of the noise recording, e.g. 0.1")
        _require((self.background_frequency > 0.0) == (self.background_volume > 0.0), "background_volume",
                 "and background_frequency go together: set both above 0 (e.g. 0.1 and 0.8), or neither")
        _require(0 <= self.copies <= 64, "copies", "must be from 0 (fresh every epoch) to 64, e.g. 8")
        _require(0.0 <= self.speed_perturbation <= 0.3, "speed_perturbation",
                 "must be in [0, 0.3]: clips play up to that much faster or slower, e.g. 0.1")
        _require(0 <= self.time_mask_frames <= 100, "time_mask_frames",
                 "must be from 0 to 100 frames, e.g. 5 (100 ms of 20-ms frames)")
        _require(0 <= self.freq_mask_channels <= 100, "freq_mask_channels", "must be from 0 to 100 channels, e.g. 5")
        _require(self.copies == 0 or self.waveform, "copies",
                 "keeps changed audio clips' features; it needs time_shift_ms, background_frequency or "
                 "speed_perturbation (images are changed per batch, which costs little: remove copies)")

    @property
    def image(self) -> bool:
        return self.flip_horizontal or self.shift_fraction > 0.0 or self.crop_fraction > 0.0

    @property
    def waveform(self) -> bool:
        return self.time_shift_ms > 0 or self.background_frequency > 0.0 or self.speed_perturbation > 0.0

    @property
    def masks(self) -> bool:
        return self.time_mask_frames > 0 or self.freq_mask_channels > 0

    @property
    def audio(self) -> bool:
        return self.waveform or self.masks

    @property
    def active(self) -> bool:
        return self.image or self.audio


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the data comes from and how it is split; `format` picks the reader in `tinykd.data`.

    `val_fraction` and `test_fraction` apply only where the source has no such split of its own.
    """

    format: str = "fashion_mnist"
    path: str | None = None
    image_size: tuple[int, ...] | None = None
    color: str = "grayscale"
    normalize: NormalizeConfig | None = None
    augment: AugmentConfig | None = None
    skip_unreadable: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 0
    download: bool = True
    # Keyword spotting (format speech_commands): the classes are _silence_, _unknown_, then `keywords` in order.
    keywords: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    unknown_fraction: float = 0.1
    silence_fraction: float = 0.1
    # The training split's own shares (null: the two above). Validation and test keep the evaluation mix above, so
    # training on more negatives does not change the clips a model is judged on.
    train_unknown_fraction: float | None = None
    train_silence_fraction: float | None = None
    sample_rate_hz: int = 16000
    clip_ms: int = 1000
    synthesize: bool = False
    # With synthesize: this many more of the synthesizer's voices, for training only; the validation and test speakers
    # (and so every clip a model is judged on) stay the same. A set already at `path` must have been made with as many.
    extra_train_speakers: int = 0
    # With synthesize: how the validation and test speakers are drawn, "random" or "matched" (both splits hold the
    # same kinds of voice: tinykd.data.keywords.split_speakers). A set already at `path` must have been made so.
    held_out_speakers: str = "random"
    # With synthesize: each flite voice in training says this many times the clips (the pool has 5 flite voices to
    # 224 of espeak-ng; tinykd.data.keywords.synthesize). A set already at `path` must have been made with it.
    flite_clip_factor: int = 1
    # With synthesize: training clips also cut from this many minutes of stream spoken by the training speakers
    # (tinykd.data.keyword_stream.training_windows). A set already at `path` must have been made with as many.
    train_stream_minutes: float = 0
    # With synthesize: each training speaker says these words this many times, as "word=N" ("off=6"; quoted, since
    # YAML reads a bare off as false), in place of 3 for a keyword or near miss and 1 for another word. Validation
    # and test voices keep their counts. A set already at `path` must have been made with the same.
    train_word_clips: tuple[str, ...] = ()
    # Distillation on unlabelled data: the teacher gives soft targets for these inputs and the student learns from
    # them too. `unlabeled` is a path in the same format as `path`. `labeled_samples` keeps only that many labelled
    # training samples (seeded, stratified), to measure what labels are worth; `unlabeled: rest` then makes the
    # rest of the training split the unlabelled data.
    unlabeled: str | None = None
    labeled_samples: int | None = None
    # Data that does not fit in memory (image_folder, speech_commands): true (or always) streams the training split
    # from disk through tf.data, false (never) reads it into arrays, auto streams when its decoded float32 inputs
    # would exceed tinykd.data.streaming.THRESHOLD_BYTES (1 GiB). Stored as auto, always or never.
    stream: bool | str = "auto"

    def __post_init__(self):
        _require(self.seed >= 0, "seed", "must be 0 or more (it seeds the split)")
        if isinstance(self.stream, bool):
            object.__setattr__(self, "stream", "always" if self.stream else "never")
        _require(self.stream in STREAM_MODES, "stream", "must be true, false or auto (true streams the training "
                 "split from disk, auto only when it would pass 1 GiB)")
        _require(self.stream != "always" or self.format in STREAMED_FORMATS, "stream",
                 f"true works for {' and '.join(STREAMED_FORMATS)}; {self.format} is read into memory, so use "
                 "auto or false")
        _require(self.stream != "always" or not (self.skip_unreadable or self.unlabeled or self.labeled_samples),
                 "stream", "true cannot be combined with skip_unreadable, unlabeled or labeled_samples (they "
                 "need every input read first); use stream: false")

        _require(self.format in DATA_FORMATS, "format", f"must be one of {', '.join(sorted(DATA_FORMATS))}")
        _require(self.format == "fashion_mnist" or bool(self.path), "path",
                 f"is required for format {self.format}: the folder or file holding your data")
        _require(0.0 < self.val_fraction < 0.5, "val_fraction", "must be between 0 and 0.5 (e.g. 0.1)")
        _require(0.0 < self.test_fraction < 0.5, "test_fraction", "must be between 0 and 0.5 (e.g. 0.1)")
        _require(self.color in ("grayscale", "rgb"), "color", "must be grayscale or rgb")
        _require(self.image_size is None or (len(self.image_size) == 2 and min(self.image_size) >= 4),
                 "image_size", "must be [height, width], each at least 4 pixels, e.g. [32, 32]")
        _require(self.format != "image_folder" or self.image_size is not None, "image_size",
                 "is required for format image_folder: every image is resized to it, e.g. [32, 32]")
        for key in ("max_train_samples", "max_test_samples"):
            value = getattr(self, key)
            _require(value is None or value >= 32, key, "must be at least 32, or null for all samples")
        _require(self.labeled_samples is None or self.labeled_samples >= 32, "labeled_samples",
                 "must be at least 32, or null to keep every training label")
        _require(self.unlabeled != UNLABELED_REST or self.labeled_samples is not None, "unlabeled",
                 "'rest' means the training samples beyond labeled_samples; set data.labeled_samples too")
        self._check_keywords()
        if self.augment is not None and self.augment.audio:
            _require(self.format == "speech_commands", "augment",
                     "time_shift_ms, background_frequency, background_volume, speed_perturbation and the feature "
                     f"masks change audio clips (format speech_commands); {self.format} gives images: use "
                     "flip_horizontal, shift_fraction, crop_fraction")
            _require(not (self.unlabeled or self.labeled_samples), "augment",
                     "audio augmentation cannot be combined with data.unlabeled or data.labeled_samples yet; "
                     "remove one of them")

    def fractions(self, split: str) -> tuple[float, float]:
        """(unknown, silence) clips per keyword clip in `split` ("train", "val" or "test")."""
        if split == "train":
            return (self.unknown_fraction if self.train_unknown_fraction is None else self.train_unknown_fraction,
                    self.silence_fraction if self.train_silence_fraction is None else self.train_silence_fraction)
        return self.unknown_fraction, self.silence_fraction

    def _check_keywords(self) -> None:
        _require(len(self.keywords) > 0 and len(set(self.keywords)) == len(self.keywords), "keywords",
                 "must be a non-empty list of distinct words, e.g. ['yes', 'no']")
        for word in self.keywords:
            _require(bool(word) and word[0] not in "_." and "/" not in word, "keywords",
                     f"{word!r} cannot name a word folder: no '/', and no leading '_' or '.' (those folders are "
                     "_silence_, _unknown_ and _background_noise_)")
        for key in ("unknown_fraction", "silence_fraction"):
            _require(0.0 <= getattr(self, key) <= 1.0, key,
                     "must be in [0, 1]: clips per keyword clip in each split (0.1 as in TensorFlow's speech_commands)")
        for key in ("train_unknown_fraction", "train_silence_fraction"):  # training may see more negatives than words
            _require(getattr(self, key) is None or 0.0 <= getattr(self, key) <= MAX_TRAIN_FRACTION, key,
                     f"must be in [0, {MAX_TRAIN_FRACTION:g}]: clips per keyword clip in the training split")
        _require(4000 <= self.sample_rate_hz <= 48000, "sample_rate_hz", "must be in [4000, 48000], e.g. 16000")
        _require(100 <= self.clip_ms <= 10000, "clip_ms", "must be in [100, 10000], e.g. 1000")
        _require(self.sample_rate_hz * self.clip_ms % 1000 == 0, "clip_ms",
                 f"must hold a whole number of samples at {self.sample_rate_hz} Hz")
        _require(not self.synthesize or self.format == "speech_commands", "synthesize",
                 "applies only to format speech_commands (it writes a synthetic keyword dataset at data.path)")
        _require(self.extra_train_speakers >= 0, "extra_train_speakers", "must be 0 or more (voices for training only)")
        _require(not self.extra_train_speakers or self.format == "speech_commands", "extra_train_speakers",
                 "applies only to format speech_commands (training-only voices of a synthesized keyword dataset)")
        _require(self.held_out_speakers in HELD_OUT_SPLITS, "held_out_speakers",
                 f"must be one of {', '.join(HELD_OUT_SPLITS)}")
        _require(self.held_out_speakers == "random" or self.format == "speech_commands", "held_out_speakers",
                 "applies only to format speech_commands (the held-out voices of a synthesized keyword dataset)")
        _require(self.flite_clip_factor >= 1, "flite_clip_factor",
                 "must be 1 or more (times the clips each flite voice in training says)")
        _require(self.flite_clip_factor == 1 or self.format == "speech_commands", "flite_clip_factor",
                 "applies only to format speech_commands (the flite voices of a synthesized keyword dataset)")
        _require(self.train_stream_minutes >= 0, "train_stream_minutes",
                 "must be 0 (none) or more (minutes of training stream to cut clips from)")
        _require(not self.train_stream_minutes or self.format == "speech_commands", "train_stream_minutes",
                 "applies only to format speech_commands (training clips of a synthesized keyword dataset)")
        try:
            word_counts(self.train_word_clips)
        except ValueError as error:
            raise _Invalid("train_word_clips", str(error)) from None
        _require(not self.train_word_clips or self.format == "speech_commands", "train_word_clips",
                 "applies only to format speech_commands (training clips of a synthesized keyword dataset)")

    @property
    def word_clips(self) -> dict[str, int]:
        """train_word_clips as word -> clips per training speaker."""
        return word_counts(self.train_word_clips)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """An architecture from the zoo (`tinykd.models`); input shape and class count come from the data.

    Or your own Keras model, in place of every zoo key (tinykd.own_model): `path`, a model file (.keras, .h5 or a
    SavedModel folder; untrained, or trained weights to fine-tune), or `factory`, "module:function" with
    `function(input_shape, num_classes) -> keras.Model`, the module looked for in `module_dir` (by default the
    recipe's folder) and then on PYTHONPATH.
    """

    arch: str = "cnn"
    filters: tuple[int, ...] = (16, 32, 64)
    width_multiplier: float = 1.0
    convs_per_block: int = 1
    first_kernel: tuple[int, ...] | None = None
    first_strides: tuple[int, ...] = (1, 1)
    pool_between_blocks: bool = True
    head: str = "gap"
    dense_units: int = 0
    dropout: float = 0.0
    # Not in the repr, which stage keys hash: unset (the zoo), they must leave every zoo build's keys as they were;
    # set, the teacher and distill keys add own_model.identity (the factory's name, the file's content hash).
    path: str | None = field(default=None, repr=False)
    factory: str | None = field(default=None, repr=False)
    module_dir: str | None = field(default=None, repr=False)

    def __post_init__(self):
        _require(self.path is None or self.factory is None, "factory",
                 "give one of path (a model file) and factory (module:function), not both")
        _require(self.factory is None or _FACTORY.fullmatch(self.factory) is not None, "factory",
                 f"must be module:function, e.g. my_models:student (got {self.factory!r})")
        _require(self.module_dir is None or self.factory is not None, "module_dir",
                 "is where factory's module is looked for; set factory too, or remove module_dir")
        _require(self.arch in ARCHITECTURES, "arch", f"must be one of {sorted(ARCHITECTURES)}")
        _require(self.head in HEADS, "head", f"must be one of {sorted(HEADS)}")
        _require(len(self.filters) > 0 and all(f > 0 for f in self.filters), "filters",
                 "must be a non-empty list of positive channel counts, e.g. [16, 32, 64]")
        _require(self.convs_per_block >= 1, "convs_per_block", "must be at least 1")
        _require(0.0 < self.width_multiplier <= 8.0, "width_multiplier",
                 "must be in (0, 8]: every entry of filters is scaled by it (e.g. 0.5 for half width)")
        _require(self.first_kernel is None or (len(self.first_kernel) == 2 and min(self.first_kernel) >= 1),
                 "first_kernel", "must be [height, width] of the first convolution, e.g. [10, 4], or null for 3x3")
        _require(len(self.first_strides) == 2 and min(self.first_strides) >= 1, "first_strides",
                 "must be [height, width] strides of the first convolution, e.g. [2, 2]")
        _require(self.dense_units >= 0, "dense_units", "must be 0 (no hidden dense layer) or more")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


# `factory: module:function`, the module a dotted name (my_models or pkg.my_models).
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# What replaces the zoo in a ModelConfig: none of the zoo's keys may stand beside them.
MODEL_SOURCES = ("path", "factory")


def _check_model_source(raw: dict, where: str) -> None:
    """A model section holds zoo keys or one of `path` / `factory` (with factory's `module_dir`), never a mix."""
    sources = [key for key in MODEL_SOURCES if raw.get(key) is not None]
    zoo = [key for key in raw if key not in MODEL_SOURCES + ("module_dir",)]
    if sources and zoo:
        raise ConfigError(f"{where}{zoo[0]}: a zoo key cannot stand beside {sources[0]} (your own model replaces "
                          f"the zoo's settings); remove {', '.join(zoo)} or remove {sources[0]}")


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Train `model` on labels, or load a trained teacher from `path` (.keras, .h5 or a SavedModel folder)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(filters=(32, 64), convs_per_block=2,
                                                                   head="flatten", dense_units=128, dropout=0.3))
    path: str | None = None
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        _check_training(self)
        _require(self.path is None or (self.model.path is None and self.model.factory is None), "path",
                 "is a trained teacher to load as it is, model.path / model.factory a model to train: give one")


@dataclass(frozen=True, kw_only=True)
class LayerPairConfig:
    """A teacher layer and the student layer that learns from it, by the names the zoo gives them."""

    teacher_layer: str
    student_layer: str
    weight: float = 1.0

    def __post_init__(self):
        _require(self.weight > 0.0, "weight", "must be positive")


@dataclass(frozen=True, kw_only=True)
class HintConfig(LayerPairConfig):
    """Feature distillation (FitNets): a learned projection maps `student_layer` onto `teacher_layer`, MSE.

    The projection (1x1 convolution, resized when resolutions differ; dense for vectors) is training-only: it lives
    in the Distiller, never in the student, so it never reaches the exported model.
    """


@dataclass(frozen=True, kw_only=True)
class AttentionConfig(LayerPairConfig):
    """Attention transfer (Zagoruyko & Komodakis 2017) between two convolutional layers.

    Each map is the channel mean of squared activations, flattened and L2-normalised; the student's map is resized
    to the teacher's resolution first. Loss: weight / 2 * mean((student_map - teacher_map)^2), the paper's beta = 1000.
    """

    weight: float = 1000.0


@dataclass(frozen=True, kw_only=True)
class EnsembleTeacherConfig(TeacherConfig):
    """One more teacher whose softened outputs are averaged with the main teacher's, with this `weight`."""

    weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _require(self.weight > 0.0, "weight", "must be positive (a relative weight in the average, e.g. 1.0)")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How the student learns from the teacher; the terms add up, each with its weight:

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)     logits (Hinton et al. 2015)
    + sum of hints[i].weight * MSE(projection_i(student layer), teacher layer)      FitNets
    + sum of attention[i].weight / 2 * mean((student map - teacher map)^2)        attention transfer

    `ensemble` adds teachers: the soft targets become the weighted mean of every teacher's softmax(logits / T)
    (the main teacher weighs `teacher_weight`); hints and attention read the main teacher's layers.
    `rounds` > 1 is self-distillation ("born-again"): each round's student, frozen, teaches a fresh student of the
    same architecture, on the logits term only; pruning and QAT then distil from the teacher(s) again.
    """

    student: ModelConfig = field(default_factory=ModelConfig)
    temperature: float = 4.0
    alpha: float = 0.9
    hints: tuple[HintConfig, ...] = ()
    attention: tuple[AttentionConfig, ...] = ()
    ensemble: tuple[EnsembleTeacherConfig, ...] = ()
    teacher_weight: float = 1.0
    rounds: int = 1
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 2e-3

    def __post_init__(self):
        _check_training(self)
        _require(self.temperature >= 1.0, "temperature", "must be at least 1 (1 means no softening)")
        _require(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1] (0 trains on labels only)")
        _require(self.teacher_weight > 0.0, "teacher_weight", "must be positive (the main teacher's weight)")
        _require(1 <= self.rounds <= 10, "rounds", "must be 1 (plain distillation) to 10 (born-again rounds)")
        _require(self.rounds == 1 or self.alpha > 0.0, "rounds",
                 "born-again rounds teach through soft targets only; with alpha 0 they would be plain retraining")
        _require(not self.ensemble or self.alpha > 0.0, "ensemble",
                 "teaches through soft targets only; with alpha 0 it would be ignored (raise alpha or remove it)")

    @property
    def feature_pairs(self) -> tuple:
        """Every hint and attention pair, in recipe order (hints first)."""
        return self.hints + self.attention

    @property
    def teaches(self) -> bool:
        """Whether the teacher takes part at all (soft targets, hints or attention)."""
        return self.alpha > 0.0 or bool(self.feature_pairs)


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """What structured pruning prunes toward: any of MACs, int8 .tflite bytes and latency on a board.

    Latency is the estimate of `tinykd report` for `board` (the recipe's target.board when left out).
    """

    macs: int | None = None
    tflite_bytes: int | None = None
    latency_ms: float | None = None
    board: str | None = None

    def __post_init__(self):
        _require(any(v is not None for v in (self.macs, self.tflite_bytes, self.latency_ms)), "macs",
                 "a budget needs at least one of macs, tflite_bytes and latency_ms")
        for key in ("macs", "tflite_bytes", "latency_ms"):
            value = getattr(self, key)
            _require(value is None or value > 0, key, "must be positive")
        if self.board is not None:
            from tinykd.boards import load_boards

            _require(self.board in load_boards(), "board", "unknown board (list them with `tinykd boards`)")

    def met_by(self, figures: dict) -> bool:
        """Whether `figures` ({"macs", "tflite_bytes", "latency_ms"}) meet every limit this budget sets."""
        return all(getattr(self, key) is None or figures[key] <= getattr(self, key)
                   for key in ("macs", "tflite_bytes", "latency_ms"))


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Pruning, fine-tuned with the distillation loss.

    method magnitude: TFMOT magnitude pruning to `target_sparsity` with a polynomial schedule. Zeros save no flash
    or time on TFLite Micro (dense weights, no sparse kernels); the report says so.
    method structured: tinykd's own filter removal (tinykd.structured). Each step removes `step_fraction` of every
    prunable layer's remaining channels (ranked by `score`; `scope` layer or global; each layer keeps the nearest
    multiple of `channel_multiple`, 8 for fast training on the host), rebuilds a thinner dense model
    and fine-tunes it `epochs`, except that a step which would overshoot the budget removes only the share that
    meets it (found on the untrained thinned model, whose figures depend on its shapes alone); steps stop when
    `budget` is met, after `max_steps`, when a step would cost more than `max_accuracy_drop` validation
    accuracy against the distilled student (that step is undone), or, without a budget, when the next step would
    remove no filter (every layer at the narrowest `channel_multiple` allows). Then, with
    `rewind_epochs`, the kept model retrains that long at the distillation's learning rate (learning-rate
    rewinding, Renda et al. 2020: short fine-tunes at a small rate leave accuracy behind that a fresh schedule
    recovers).
    """

    method: str = "magnitude"
    target_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    frequency_steps: int = 50
    step_fraction: float = 0.2
    max_steps: int = 5
    score: str = "l1"
    scope: str = "layer"
    channel_multiple: int = 1
    budget: BudgetConfig | None = None
    max_accuracy_drop: float = 0.01
    rewind_epochs: int = 0
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 5e-4

    def __post_init__(self):
        _check_training(self)
        _require(self.method in ("magnitude", "structured"), "method", "must be magnitude or structured")
        _require(0.0 < self.target_sparsity < 1.0, "target_sparsity", "must be in (0, 1), e.g. 0.5")
        _require(0.0 <= self.initial_sparsity < self.target_sparsity, "initial_sparsity",
                 "must be in [0, target_sparsity)")
        _require(self.frequency_steps >= 1, "frequency_steps", "must be at least 1")
        _require(0.0 < self.step_fraction < 1.0, "step_fraction", "must be in (0, 1), e.g. 0.2")
        _require(1 <= self.max_steps <= 50, "max_steps", "must be 1 to 50")
        _require(self.score in ("l1", "bn_scale"), "score", "must be l1 or bn_scale")
        _require(self.scope in ("layer", "global"), "scope", "must be layer or global")
        _require(1 <= self.channel_multiple <= 64, "channel_multiple", "must be 1 (any width) to 64, e.g. 8")
        _require(0.0 <= self.max_accuracy_drop < 1.0, "max_accuracy_drop", "must be in [0, 1), e.g. 0.01")
        _require(self.rewind_epochs >= 0, "rewind_epochs", "must be 0 (off) or more")
        _require(self.method == "structured" or self.rewind_epochs == 0, "rewind_epochs",
                 "applies to method: structured only")
        _require(self.method == "structured" or self.budget is None, "budget",
                 "applies to method: structured only (magnitude pruning saves no MACs or bytes on TFLM)")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """TFMOT weight clustering to `clusters` shared values per kernel, fine-tuned with the distillation loss.

    On its own it saves nothing on TFLite Micro (int8 weights are still stored one byte each); with `compress:`
    the int8 kernels become bit-packed indices into small tables, and QAT keeps the clusters (cluster-preserving).
    """

    clusters: int = 16
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 2e-4

    def __post_init__(self):
        _check_training(self)
        _require(2 <= self.clusters <= 128, "clusters", "must be 2 to 128 (16 gives 4-bit indices)")


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    """TFLite Micro's LUT compression of the int8 model (tinykd.lut), checked for identical TFLM outputs.

    `bits` fixes the index width of every compressed tensor; null picks 2, 3 or 4 per tensor from its values.
    A tensor stays dense where indices plus tables would not be smaller (each choice is reported with why).
    """

    bits: int | None = None

    def __post_init__(self):
        _require(self.bits is None or 1 <= self.bits <= 7, "bits", "must be 1 to 7, or null to choose per tensor")


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """INT8 quantization-aware training, still distilling from the teacher.

    `calibrate_ranges` starts every activation range where the float student's activations lie on 1,000 training
    inputs (tinykd.qat.calibrate_ranges) instead of at TFMOT's [-6, 6]. Turn it on for a short QAT of a model whose
    activations or logits go past 6: 16 steps left a small MLP clipped at 6 (int8 72.5% against 95.0% with it).
    It is off by default because the keyword recipe lost 1.1 points with it and Fashion-MNIST nothing
    (docs/findings.md): TFMOT's start clips the ReLUs near 6-15 while QAT trains, which the keyword model liked.
    """

    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 2e-4
    calibrate_ranges: bool = False

    def __post_init__(self):
        _check_training(self)


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """Full-int8 conversion; the representative samples calibrate activations (post-training quantization)."""

    representative_samples: int = 500

    def __post_init__(self):
        _require(self.representative_samples >= 1, "representative_samples", "must be at least 1")


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """Run the int8 model in TFLite Micro and in TFLite's reference kernels on the test split.

    With `per_stage`, every float stage's model (distilled, pruned, clustered) is also converted to int8 by
    post-training quantization and measured like the final one (TFLM accuracy, bytes, flash, RAM, latency on the
    board), so the report shows what each technique bought on the board (seconds for a small model).

    `firmware`: run the export's golden vectors on the emulated core of `target.board` (TFLM + CMSIS-NN on
    QEMU, tinykd.firmware) before the build is done: `auto` when the TFLM tree, the cross-compiler and QEMU are
    there (the report says why not otherwise), `always` (their absence fails the build), or `never`.
    """

    max_samples: int | None = None
    per_stage: bool = True
    firmware: str = "auto"

    def __post_init__(self):
        _require(self.max_samples is None or self.max_samples >= 1, "max_samples", "must be positive or null")
        _require(self.firmware in ("auto", "always", "never"), "firmware", "must be auto, always or never")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Firmware files; `name` prefixes files and C identifiers (defaults to the recipe name)."""

    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    """The board the report sizes the model against."""

    board: str = "nucleo-l4r5zi"

    def __post_init__(self):
        from tinykd.boards import load_boards

        known = load_boards()
        _require(self.board in known, "board", f"unknown board; known: {', '.join(sorted(known))} "
                                               "(list them with `tinykd boards`)")


FRONTEND_KINDS = ("microfrontend",)


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """The recipe's `stream` section: how often the model runs on a stream and how its scores become detections.

    `threshold` is the averaged probability of the top class (0 to 1); on the device it becomes a whole number of
    output steps (`threshold_level`), compared in integers.
    """

    stride_ms: int = 100
    average_window_ms: int = 500
    threshold: float = 0.7
    suppression_ms: int = 1000
    min_count: int = 3

    def __post_init__(self):
        _require(self.stride_ms >= 1, "stride_ms", "must be at least 1, e.g. 100 (a multiple of the front-end's "
                 "window_stride_ms)")
        _require(self.average_window_ms >= self.stride_ms, "average_window_ms",
                 f"must be at least stride_ms ({self.stride_ms}) so a result can be averaged, e.g. 500")
        _require(math.isfinite(self.threshold) and 0.0 < self.threshold <= 1.0, "threshold",
                 "must be in (0, 1]: the averaged probability of the detected keyword, e.g. 0.7")
        _require(self.suppression_ms >= 0, "suppression_ms", "must be 0 or more, e.g. 1000")
        _require(1 <= self.min_count <= self.capacity, "min_count",
                 f"must be from 1 to {self.capacity} (results that fit in average_window_ms at stride_ms), e.g. 3")

    @property
    def capacity(self) -> int:
        """Results the averaging window can hold: one per stride over the window, and the newest."""
        return self.average_window_ms // self.stride_ms + 1


@dataclass(frozen=True, kw_only=True)
class FrontendConfig:
    """TFLite Micro's audio microfrontend settings; the defaults are micro_speech's (49 frames x 40 channels).

    Each field feeds one field of the C library's `struct FrontendConfig` (frontend_util.h), named in
    `tinykd.audio.settings`, except `kind` and `clip_ms`, which are tinykd's: which front-end, and how much audio
    one inference sees. Sample counts are `ms * sample_rate_hz / 1000`, truncated, as the library computes them.
    """

    kind: str = "microfrontend"
    sample_rate_hz: int = 16000
    clip_ms: int = 1000
    window_size_ms: int = 30
    window_stride_ms: int = 20
    num_channels: int = 40
    lower_band_limit_hz: float = 125.0
    upper_band_limit_hz: float = 7500.0
    smoothing_bits: int = 10
    even_smoothing: float = 0.025
    odd_smoothing: float = 0.06
    min_signal_remaining: float = 0.05
    enable_pcan: bool = True
    pcan_strength: float = 0.95
    pcan_offset: float = 80.0
    gain_bits: int = 21
    enable_log: bool = True
    scale_shift: int = 6

    def __post_init__(self):
        _require(self.kind in FRONTEND_KINDS, "kind",
                 f"must be one of {', '.join(FRONTEND_KINDS)} (MFCC is not implemented yet)")
        _require(8000 <= self.sample_rate_hz <= 48000 and self.sample_rate_hz % 1000 == 0, "sample_rate_hz",
                 "must be a whole number of kHz from 8000 to 48000, e.g. 16000")
        _require(self.window_size_ms >= 1, "window_size_ms", "must be at least 1, e.g. 30")
        _require(1 <= self.window_stride_ms <= self.window_size_ms, "window_stride_ms",
                 f"must be from 1 to window_size_ms ({self.window_size_ms}), so no audio is skipped, e.g. 20")
        _require(self.clip_ms >= self.window_size_ms, "clip_ms",
                 f"must be at least window_size_ms ({self.window_size_ms}) to give one frame, e.g. 1000")
        _require(1 <= self.num_channels <= self.window_samples // 2, "num_channels",
                 f"must be from 1 to {self.window_samples // 2} (half the window's samples), e.g. 40")
        nyquist_hz = self.sample_rate_hz / 2
        _require(math.isfinite(self.lower_band_limit_hz) and 0.0 <= self.lower_band_limit_hz < nyquist_hz,
                 "lower_band_limit_hz", f"must be in [0, {nyquist_hz:g}) Hz, e.g. 125.0")
        # The filterbank needs an FFT bin above its upper limit, and the last bin is at Nyquist.
        _require(math.isfinite(self.upper_band_limit_hz)
                 and self.lower_band_limit_hz < self.upper_band_limit_hz < nyquist_hz,
                 "upper_band_limit_hz", f"must be above lower_band_limit_hz and below {nyquist_hz:g} Hz (Nyquist), "
                 "e.g. 7500.0")
        _require(0 <= self.smoothing_bits <= 16, "smoothing_bits", "must be from 0 to 16, e.g. 10")
        for key in ("even_smoothing", "odd_smoothing", "min_signal_remaining"):
            _require(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        _require(math.isfinite(self.pcan_strength) and self.pcan_strength >= 0.0, "pcan_strength",
                 "must be 0 or more, e.g. 0.95")
        _require(math.isfinite(self.pcan_offset) and self.pcan_offset > 0.0, "pcan_offset",
                 "must be positive, e.g. 80.0")
        _require(1 <= self.gain_bits <= 30, "gain_bits", "must be from 1 to 30, e.g. 21")
        _require(0 <= self.scale_shift <= 16, "scale_shift", "must be from 0 to 16, e.g. 6")

    @property
    def clip_samples(self) -> int:
        return self.clip_ms * self.sample_rate_hz // 1000

    @property
    def window_samples(self) -> int:
        return self.window_size_ms * self.sample_rate_hz // 1000

    @property
    def stride_samples(self) -> int:
        return self.window_stride_ms * self.sample_rate_hz // 1000

    @property
    def frames(self) -> int:
        """Feature frames per clip, as the op counts them: every whole window, none padded."""
        return (self.clip_samples - self.window_samples) // self.stride_samples + 1

    @property
    def feature_shape(self) -> tuple[int, int]:
        return (self.frames, self.num_channels)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """`tinykd search`: the students it samples, the budget they must meet, and the successive-halving schedule.

    A space key left out (null) takes the default for the data (tinykd.search.space.DEFAULTS): images get CNNs and
    DS-CNNs of 2-3 blocks, audio DS-CNNs and CNNs of 3-5 blocks with a strided first convolution. Each sampled
    student has `blocks` blocks whose channel counts are drawn from `filters` and sorted (never narrower deeper).
    Budget keys left out do not constrain; the recipe's student is always candidate 0, the reference.
    """

    archs: tuple[str, ...] | None = None
    blocks: tuple[int, ...] | None = None
    filters: tuple[int, ...] | None = None
    convs_per_block: tuple[int, ...] | None = None
    first_kernels: tuple[tuple[int, ...], ...] | None = None
    first_strides: tuple[tuple[int, ...], ...] | None = None
    pool_between_blocks: tuple[bool, ...] | None = None
    heads: tuple[str, ...] | None = None
    latency_ms: float | None = None
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    board: str | None = None  # whose estimates the budget is checked on; default target.board
    trials: int = 24  # candidates sampled and measured per bracket (before the budget drops any)
    # Scale each drawn student's width (eighths of its filters) to the widest that meets the budget, so every
    # candidate spends it; off: a draw is measured as drawn and dropped when over.
    fit_width: bool = False
    min_epochs: int = 2  # the first rung trains every feasible candidate this long
    max_epochs: int = 18  # the last rung
    eta: int = 3  # each rung keeps the best 1/eta and trains eta times longer
    hours: float | None = None  # brackets until this much search time is spent (none: one bracket)
    seed: int = 0  # the sampling of the space

    def __post_init__(self):
        _require(self.archs is None or (self.archs and set(self.archs) <= {"cnn", "ds_cnn"}), "archs",
                 "must be a non-empty list of cnn and/or ds_cnn")
        _require(self.blocks is None or (self.blocks and min(self.blocks) >= 1), "blocks",
                 "must be a non-empty list of block counts, each at least 1, e.g. [2, 3]")
        _require(self.filters is None or (self.filters and min(self.filters) >= 1), "filters",
                 "must be a non-empty list of channel counts to draw each block's from, e.g. [8, 16, 32]")
        _require(self.convs_per_block is None or (self.convs_per_block and min(self.convs_per_block) >= 1),
                 "convs_per_block", "must be a non-empty list of counts, each at least 1, e.g. [1, 2]")
        for key in ("first_kernels", "first_strides"):
            value = getattr(self, key)
            _require(value is None or (value and all(len(v) == 2 and min(v) >= 1 for v in value)), key,
                     "must be a non-empty list of [height, width] pairs, e.g. [[3, 3], [5, 5]]")
        _require(self.pool_between_blocks is None or len(self.pool_between_blocks) > 0, "pool_between_blocks",
                 "must be a non-empty list of true/false")
        _require(self.heads is None or (self.heads and set(self.heads) <= set(HEADS)), "heads",
                 f"must be a non-empty list of {', '.join(HEADS)}")
        for key in ("latency_ms", "flash_bytes", "ram_bytes", "hours"):
            value = getattr(self, key)
            _require(value is None or value > 0, key, "must be positive, or null for no limit")
        if self.board is not None:
            from tinykd.boards import load_boards

            _require(self.board in load_boards(), "board", "unknown board (list them with `tinykd boards`)")
        _require(self.trials >= 1, "trials", "must be at least 1 (the recipe's own student is one of them)")
        _require(1 <= self.min_epochs <= self.max_epochs, "min_epochs", "must be from 1 to max_epochs")
        _require(self.eta >= 2, "eta", "must be at least 2 (each rung keeps 1/eta of the candidates)")
        _require(self.seed >= 0, "seed", "must be 0 or more")


@dataclass(frozen=True, kw_only=True)
class DistributeConfig:
    """Where training runs (tinykd.distribute): `default` one process as usual; `mirrored` every local GPU (one
    replica on a CPU-only machine); `multi_worker` TensorFlow's MultiWorkerMirroredStrategy across the machines
    TF_CONFIG names. Each training section's `batch_size` is then the global batch size over every replica."""

    strategy: str = "default"

    def __post_init__(self):
        _require(self.strategy in DISTRIBUTE_STRATEGIES, "strategy",
                 f"must be one of {', '.join(DISTRIBUTE_STRATEGIES)} (multi_worker reads TF_CONFIG on each worker)")


DISTRIBUTE_STRATEGIES = ("default", "mirrored", "multi_worker")  # tinykd.distribute.STRATEGIES


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole recipe. `prune: none` and `quantize: none` skip those stages (no QAT means post-training quantization).

    `seed` seeds the student stages only; the split (`data.seed`) and the teacher (`teacher.seed`) have their own,
    so several student seeds share one cached teacher.
    """

    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendConfig | None = None
    stream: StreamConfig = field(default_factory=StreamConfig)  # an audio model's listening loop
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig | None = field(default_factory=PruneConfig)
    cluster: ClusterConfig | None = None
    quantize: QuantizeConfig | None = field(default_factory=QuantizeConfig)
    compress: CompressConfig | None = None
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)  # tinykd search only
    distribute: DistributeConfig = field(default_factory=DistributeConfig)

    def __post_init__(self):
        _require(self.name.replace("_", "").replace("-", "").isalnum(), "name",
                 "must be letters, digits, '_' or '-' (it names the folder runs/<name>/)")
        if self.frontend is not None:
            _require(self.data.format == "speech_commands", "frontend",
                     f"turns audio into features; data.format {self.data.format} is not audio (remove frontend)")
            _require(self.frontend.sample_rate_hz == self.data.sample_rate_hz, "frontend.sample_rate_hz",
                     f"must equal data.sample_rate_hz ({self.data.sample_rate_hz}): the loader resamples to it")
            _require(self.frontend.clip_ms == self.data.clip_ms, "frontend.clip_ms",
                     f"must equal data.clip_ms ({self.data.clip_ms}): the loader cuts clips to it")
            _require(self.stream.stride_ms % self.frontend.window_stride_ms == 0, "stream.stride_ms",
                     f"must be a multiple of frontend.window_stride_ms ({self.frontend.window_stride_ms}): the "
                     "device has new features only every window stride")
            _require(self.data.normalize is None, "data.normalize",
                     "must be left out with a frontend: the model's input is fixed by the front-end's int8 features")

    @property
    def export_name(self) -> str:
        return self.export.name or self.name.replace("-", "_")


def _check_training(section) -> None:
    _require(section.epochs >= 1, "epochs", "must be at least 1")
    _require(section.batch_size >= 1, "batch_size", "must be at least 1")
    _require(0.0 < section.learning_rate < 1.0, "learning_rate", "must be in (0, 1), e.g. 1e-3")


def load(path: str | Path, overrides: dict[str, str] | None = None, smoke: bool = False) -> Config:
    """Read a YAML recipe, apply `--set` overrides (and the smoke shrink), and validate everything once.

    Args:
        path: the recipe file.
        overrides: dotted key -> value text, parsed as YAML (`distill.temperature=6` gives 6.0).
        smoke: shrink the recipe to seconds (see SMOKE_OVERRIDES); the run is named `<name>-smoke`.

    Raises:
        ConfigError: naming the file and the dotted key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the recipe ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections (name:, data:, teacher:, ...)")
    raw.setdefault("name", path.stem)
    _resolve_paths(raw, path.parent)  # paths in a recipe are relative to the recipe's folder
    for key, text in (overrides or {}).items():
        value = _parse_value(text)
        if key in PATH_KEYS and isinstance(value, str) and value != UNLABELED_REST:
            value = str(Path(value).expanduser().resolve())  # paths on the command line: relative to the shell
        _set_dotted(raw, key, value, f"--set {key}={text}")
    _default_module_dirs(raw, path.parent)
    if smoke:
        for key, value in SMOKE_OVERRIDES.items():
            section = key.split(".")[0]
            # Sections that are off unless written (cluster) must not be switched on by the smoke shrink.
            if raw.get(section, {}) != "none" and (section in raw or section != "cluster"):
                _set_dotted(raw, key, value, f"{path}: smoke")
        if isinstance(raw.get("prune"), dict) and raw["prune"].get("rewind_epochs"):
            _set_dotted(raw, "prune.rewind_epochs", 1, f"{path}: smoke")
        members = raw["distill"].get("ensemble") if isinstance(raw.get("distill"), dict) else None
        for member in members if isinstance(members, list) else []:
            if isinstance(member, dict):
                member["epochs"] = 1
        raw["name"] = f"{raw['name']}-smoke"
    try:
        cfg = _build(Config, raw, str(path), "")
        _check_paths(cfg, str(path))
    except ConfigError as error:
        raise _blamed_on_override(error, str(path), overrides or {}) from None
    return cfg


def _blamed_on_override(error: ConfigError, file: str, overrides: dict[str, str]) -> ConfigError:
    """The error with the `--set KEY=VALUE` that gave the bad value in place of the recipe file, which is fine."""
    message = str(error)
    if not message.startswith(f"{file}: "):
        return error
    rest = message[len(file) + 2:]
    for key, text in overrides.items():
        if rest.startswith((f"{key}:", f"{key}.", f"{key}[")):
            return ConfigError(f"--set {key}={text}: {rest}")
    return error


def _check_paths(cfg: Config, file: str) -> None:
    """A path the recipe names must exist: the data layer never falls back elsewhere for a named path, so the
    way out is to fix the path (a speech_commands folder may be made by the build: data.synthesize)."""
    named = [("teacher.path", cfg.teacher.path, "give a .keras file or a SavedModel folder, or remove "
                                                "teacher.path to train a teacher")]
    if cfg.data.format != "speech_commands":
        hint = ("point it at the folder holding the four Fashion-MNIST IDX files, or remove data.path to use the "
                "installed dataset" if cfg.data.format == "fashion_mnist" else
                "point it at your data (a relative path is relative to the recipe's folder)")
        named.append(("data.path", cfg.data.path, hint))
    if cfg.data.unlabeled != UNLABELED_REST:
        named.append(("data.unlabeled", cfg.data.unlabeled, "point it at unlabelled data in the format of data.path"))
    for key, model in _model_sections(cfg):
        named.append((f"{key}.path", model.path, "give your model's .keras or .h5 file or SavedModel folder (a "
                                                 "relative path is relative to the recipe's folder)"))
        named.append((f"{key}.module_dir", model.module_dir, "give the folder holding the factory's module"))
    for key, value, hint in named:
        if value is not None and not Path(value).expanduser().exists():
            raise ConfigError(f"{file}: {key}: {value} does not exist; {hint}")
    for key, model in _model_sections(cfg):
        if model.factory is not None:
            module = model.factory.partition(":")[0]
            if find_module(module, model.module_dir) is None:
                raise ConfigError(f"{file}: {key}.factory: no module {module!r} in {model.module_dir} or on "
                                  f"PYTHONPATH; put {module.replace('.', '/')}.py beside the recipe, or set "
                                  f"{key}.module_dir to its folder")


def find_module(name: str, module_dir: str | None):
    """The import spec of a factory's module `name` (dotted) in `module_dir`, else on sys.path / PYTHONPATH; None
    if absent. Nothing is imported and sys.path is not touched (tinykd.own_model imports it from the spec)."""
    search = ([str(module_dir)] if module_dir else []) + sys.path
    spec = None
    for part in name.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    return spec


def _model_sections(cfg: Config) -> list[tuple[str, ModelConfig]]:
    """Every model section of a recipe that may hold your own model, with its dotted key."""
    return [("teacher.model", cfg.teacher.model), ("distill.student", cfg.distill.student)] + \
        [(f"distill.ensemble[{i}].model", member.model) for i, member in enumerate(cfg.distill.ensemble)]


PATH_KEYS = ("data.path", "data.unlabeled", "teacher.path", "teacher.model.path", "teacher.model.module_dir",
             "distill.student.path", "distill.student.module_dir")
UNLABELED_REST = "rest"  # data.unlabeled: the training samples beyond data.labeled_samples, not a path


def _resolve_paths(raw: dict, folder: Path) -> None:
    nodes = [(_node(raw, key.split(".")[:-1]), key.split(".")[-1]) for key in PATH_KEYS]
    members = raw.get("distill", {}).get("ensemble") if isinstance(raw.get("distill"), dict) else None
    for member in members if isinstance(members, list) else []:
        nodes += [(member, "path"), (_node(member, ["model"]), "path"), (_node(member, ["model"]), "module_dir")]
    for node, name in nodes:
        if isinstance(node, dict) and isinstance(node.get(name), str) and node[name] != UNLABELED_REST:
            node[name] = str((folder / Path(node[name]).expanduser()).resolve())


def _node(raw, parts: list[str]):
    """The mapping at `parts` inside `raw`, or None."""
    for part in parts:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _default_module_dirs(raw: dict, folder: Path) -> None:
    """A factory's module is looked for in the recipe's folder unless its model section names a module_dir."""
    members = raw.get("distill", {}).get("ensemble") if isinstance(raw.get("distill"), dict) else None
    models = [_node(raw, ["teacher", "model"]), _node(raw, ["distill", "student"])]
    models += [_node(member, ["model"]) for member in (members if isinstance(members, list) else [])]
    for model in models:
        if isinstance(model, dict) and model.get("factory") is not None and model.get("module_dir") is None:
            model["module_dir"] = str(folder.resolve())


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, str]:
    """Turn `key=value` strings from `--set` into a dict, rejecting ones without '='."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected dotted.key=value, e.g. --set distill.temperature=6")
        overrides[key.strip()] = value.strip()
    return overrides


def as_dict(config) -> dict:
    """A plain, JSON- and YAML-friendly dict of a config (tuples become lists)."""
    return plain(dataclasses.asdict(config))


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _parse_value(text: str):
    try:
        return yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, key: str, value, where: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None or child == "none":
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part} is {child!r}, not a section, so it has no key {parts[-1]!r}")
        node = child
    node[parts[-1]] = value


def _build(cls, raw, file: str, prefix: str):
    """Build dataclass `cls` from mapping `raw`, checking keys, types and ranges."""
    where = f"{file}: {prefix}" if prefix else f"{file}: "
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.')}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{where}{key}: unknown key{hint}")
        kwargs[key] = _convert(hints[key], value, file, f"{prefix}{key}")
    if cls is ModelConfig:
        _check_model_source(raw, where)
    try:
        return cls(**kwargs)
    except _Invalid as error:
        raise ConfigError(f"{where}{error.key}: {error}") from None
    except TypeError as error:
        raise ConfigError(f"{where.rstrip(': .')}: {error}") from None


def _convert(hint, value, file: str, key: str):
    """Check `value` against the type `hint`, converting lists to tuples and mappings to dataclasses."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if bool in options:  # true/false, or a word (data.stream: true | false | auto)
            if isinstance(value, bool):
                return value
            options = [a for a in options if a is not bool]
        if value is None or value == "none":
            if type(None) in typing.get_args(hint):
                return None
        if type(None) in typing.get_args(hint) and dataclasses.is_dataclass(options[0]) \
                and not isinstance(value, dict):
            close = isinstance(value, str) and difflib.get_close_matches(value.lower(), ["none"], n=1)
            raise ConfigError(f"{file}: {key}: expected a mapping of keys, or none to leave {key} out; got {value!r}"
                              + (" (did you mean 'none'?)" if close else ""))
        return _convert(options[0], value, file, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, file, f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{file}: {key}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, file, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if hint is str and isinstance(value, bool):
        raise ConfigError(f"{file}: {key}: expected a word, got {str(value).lower()}: YAML reads unquoted yes, no, "
                          "on and off as true/false; quote the word, e.g. 'yes'")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{file}: {key}: expected {hint.__name__}, got {value!r}")
    return value
