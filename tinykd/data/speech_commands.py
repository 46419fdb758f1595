"""Speech Commands v2 (Warden 2018), or any folder in its layout, as the classic 12-class keyword-spotting task.

Layout: `ROOT/<word>/<speaker>_nohash_<n>.wav` (16 kHz mono 16-bit, 1 s), `validation_list.txt` and
`testing_list.txt` (paths relative to ROOT, e.g. `yes/0a7c2a8d_nohash_0.wav`; every clip in neither list trains) and
`_background_noise_/*.wav`, long noise recordings. Without the two lists a clip's split follows TensorFlow's
`which_set`: a hash of its name up to `_nohash_`, so one speaker's clips share a split (val/test_fraction).

Classes, in TensorFlow's speech_commands (and micro_speech) order: `_silence_`, `_unknown_`, then `data.keywords`
(default yes, no, up, down, left, right, on, off, stop, go). Every other word folder is `_unknown_`. Each split, as in
TensorFlow's `prepare_data_index`, keeps ceil(unknown_fraction x its keyword clips) unknown clips picked with the seed
and adds ceil(silence_fraction x its keyword clips) `_silence_` clips: seeded random cuts of the background files
scaled by a gain drawn log-uniformly in [-40 dB, 0 dB] (quiet rooms to the recording's level; TensorFlow zeroes the
clip and mixes noise at up to 0.1). Without `_background_noise_/` silence clips are digital zero, as in TensorFlow.
The training split can take its own shares (`train_unknown_fraction`, `train_silence_fraction`: more negatives to
learn from) while validation and test keep the evaluation mix.

Bad audio: an unreadable or corrupt WAV stops the load naming the file (or, with `data.skip_unreadable: true`, is left
out and listed in `Dataset.skipped`); an empty one is always left out and listed. Other sample rates are resampled
(`wav.resample`, Kaiser-windowed sinc), several channels averaged to one, short clips zero-padded at the end and long
ones cut to their loudest window; `Dataset.repairs` counts each. Values stay raw int16 samples; features come later.

With `data.stream` the training clips stay on disk (tinykd.data.streaming): the same clips, silence cuts and order
are chosen here, and each is read, repaired and cut when the pipeline asks for it. Repairs are then counted on the
validation and test clips only, and an empty file is left out when listed (as in memory).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from tinykd.config import DataConfig
from tinykd.data import streaming, wav
from tinykd.data.dataset import Dataset, Preprocessing, Split
from tinykd.errors import DataError

SILENCE, UNKNOWN, BACKGROUND = "_silence_", "_unknown_", "_background_noise_"
SILENCE_INDEX, UNKNOWN_INDEX = 0, 1
LIST_FILES = {"val": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "val", "test")
REPAIRS = ("resampled", "mixed_down", "padded", "trimmed")
SILENCE_GAIN_DB = (-40.0, 0.0)
_HASH_BUCKETS = 2**27 - 1  # TensorFlow's MAX_NUM_WAVS_PER_CLASS, so hashed splits match its which_set


def read(cfg: DataConfig, seed: int) -> Dataset:
    """Every clip under `data.path` as int16-valued waveforms of shape (N, samples), split and labelled.

    Raises:
        DataError: the folder is missing (the message says how to make it), a keyword has no folder, a list names a
            missing clip, a split is empty, or a WAV is unreadable (unless `data.skip_unreadable`).
    """
    root = Path(cfg.path).expanduser()
    if absent(root):
        raise DataError(f"data.path: {root} does not exist or is empty. Make a synthetic keyword dataset there with "
                        f"`tinykd data keywords {root}` (or set data.synthesize: true and the build makes it), or "
                        "download Speech Commands v2 and point data.path at it (datasets/speech_commands/README.md)")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is a file; point it at the folder holding one sub-folder per word")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "_.")
    missing = [word for word in cfg.keywords if word not in words]
    if missing:
        raise DataError(f"data.path: {root} has no folder for keyword(s) {', '.join(missing)}; it has "
                        f"{', '.join(words) or 'no word folders'}. Fix data.keywords or add the folders")
    digest = hashlib.sha256(repr((cfg.keywords, cfg.unknown_fraction, cfg.silence_fraction, cfg.sample_rate_hz,
                                  cfg.clip_ms, cfg.val_fraction, cfg.test_fraction, seed)).encode())
    if cfg.fractions("train") != cfg.fractions("val"):  # only when set, so other fingerprints stay
        digest.update(repr(cfg.fractions("train")).encode())
    listed = _listed(root, digest)
    pools = _assign(root, words, cfg, listed, digest)
    repairs: Counter = Counter()
    skipped: list[str] = []
    noise = _background(root, cfg, repairs, skipped, digest)
    splits, short = {}, []
    share = 1.0 + sum(cfg.fractions("train"))
    stream = streaming.wanted(cfg, int(len(pools["train"][0]) * share), _length(cfg) * 4)
    for number, name in enumerate(SPLITS):
        keyword_clips, unknown_clips = pools[name]
        if not keyword_clips:
            raise DataError(f"data.path: {root}: the {name} split has no keyword clips; "
                            + ("list some in " + LIST_FILES[name] if name in LIST_FILES and listed is not None else
                               "add clips from more speakers"))
        entries = _entries(keyword_clips, unknown_clips, noise, cfg.fractions(name), _length(cfg),
                           np.random.default_rng([seed, number]))
        asked = math.ceil(len(keyword_clips) * cfg.fractions(name)[0])
        if asked > len(unknown_clips):
            key = "train_unknown_fraction" if name == "train" and cfg.train_unknown_fraction is not None \
                else "unknown_fraction"
            short.append(f"the {name} split takes all {len(unknown_clips):,} unknown clips, fewer than the "
                         f"{asked:,} data.{key} asks for (add word folders or lower it)")
        if stream and name == "train":
            splits[name] = _streamed(entries, noise, cfg, skipped)
        else:
            splits[name] = _split(entries, noise, cfg, (repairs, skipped))
    rate_khz = cfg.sample_rate_hz / 1000
    return Dataset(
        train=splits["train"], val=splits["val"], test=splits["test"],
        labels=(SILENCE, UNKNOWN, *cfg.keywords),
        preprocessing=Preprocessing(raw_scale=1.0, raw_offset=0.0, description=f"{rate_khz:g} kHz mono int16 PCM"),
        source=f"Speech Commands layout in {root} ({len(words)} word folders, {len(noise)} background files; splits "
               f"from {'the list files' if listed is not None else 'hashed speaker names'}"
               + ("; training clips streamed from disk" if stream else "")
               + "".join(f"; {note}" for note in short) + ")",
        fingerprint=digest.hexdigest()[:16],
        skipped=tuple(skipped),
        repairs=tuple((kind, repairs[kind]) for kind in REPAIRS),
        background=tuple(noise),
    )


def absent(root: Path) -> bool:
    """Whether there is no dataset at `root` yet (nothing there, or an empty folder)."""
    return not root.exists() or (root.is_dir() and not any(root.iterdir()))


def _listed(root: Path, digest) -> dict[str, str] | None:
    """Clip path (relative, '/'-separated) -> "val" or "test" from the list files; None when neither exists."""
    if not any((root / name).is_file() for name in LIST_FILES.values()):
        return None
    listed = {}
    for split, name in LIST_FILES.items():
        if (root / name).is_file():
            text = (root / name).read_text(encoding="utf-8")
            digest.update(f"{name}\n{text}".encode())
            listed.update((PurePosixPath(line.strip()).as_posix(), split) for line in text.splitlines() if line.strip())
    return listed


def _assign(root: Path, words: list[str], cfg: DataConfig, listed: dict[str, str] | None,
            digest) -> dict[str, tuple[list, list]]:
    """Per split: (keyword clips as (path, label index), unknown-word clips as paths), in a stable order."""
    label_of = {word: index for index, word in enumerate(cfg.keywords, start=2)}
    pools = {name: ([], []) for name in SPLITS}
    unlisted = dict(listed or {})
    for word in words:
        for path in sorted(p for p in (root / word).iterdir() if p.suffix.lower() == ".wav" and p.is_file()):
            relative, stat = f"{word}/{path.name}", path.stat()
            digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            split = unlisted.pop(relative, "train") if listed is not None else _which_set(path.name, cfg)
            keyword_clips, unknown_clips = pools[split]
            if word in label_of:
                keyword_clips.append((path, label_of[word]))
            else:
                unknown_clips.append(path)
    if unlisted:
        relative, split = next(iter(unlisted.items()))
        raise DataError(f"{root / LIST_FILES[split]}: lists {relative}, which is not in {root} ({len(unlisted)} "
                        "listed clips are missing); restore the clips or remove their lines")
    return pools


def _which_set(name: str, cfg: DataConfig) -> str:
    """TensorFlow's which_set: a stable hash of the speaker part of the name, so adding clips never moves one."""
    speaker = name.split("_nohash_")[0]
    percent = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % (_HASH_BUCKETS + 1)) * (100.0 / _HASH_BUCKETS)
    if percent < 100 * cfg.val_fraction:
        return "val"
    return "test" if percent < 100 * (cfg.val_fraction + cfg.test_fraction) else "train"


def _background(root: Path, cfg: DataConfig, repairs: Counter, skipped: list, digest) -> list[np.ndarray]:
    folder = root / BACKGROUND
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav") if folder.is_dir() else []
    noise = []
    # Read only when something uses them: silence cuts, or the noise data.augment mixes into training clips.
    wanted = max(cfg.silence_fraction, cfg.fractions("train")[1]) > 0 or \
        (cfg.augment is not None and cfg.augment.background_frequency > 0)
    for path in files:
        stat = path.stat()
        digest.update(f"{BACKGROUND}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        samples = _mono(path, cfg, repairs, skipped) if wanted else None
        if samples is not None:
            noise.append(samples if len(samples) >= _length(cfg) else wav.fit(samples, _length(cfg))[0])
    return noise


def _entries(keyword_clips: list, unknown_clips: list, noise: list[np.ndarray], fractions: tuple[float, float],
             length: int, rng: np.random.Generator) -> list[tuple[object, int]]:
    """The keyword clips, a seeded share of unknown clips and of silence (`fractions`, per keyword clip), in a
    seeded random order, as (source, label): a clip's path, or a silence cut (noise index, start, gain), or None
    for digital silence."""
    count = len(keyword_clips)
    unknown_fraction, silence_fraction = fractions
    picked = np.sort(rng.permutation(len(unknown_clips))[: math.ceil(count * unknown_fraction)])
    entries = keyword_clips + [(unknown_clips[i], UNKNOWN_INDEX) for i in picked]
    entries += [(None, SILENCE_INDEX)] * math.ceil(count * silence_fraction)
    entries = [entries[i] for i in rng.permutation(len(entries))]
    # Cuts drawn in order after the shuffle, as the clips used to be read: the same draws, the same silence.
    return [(_silence_cut(noise, length, rng) if path is None else path, label) for path, label in entries]


def _split(entries: list, noise: list[np.ndarray], cfg: DataConfig, log: tuple[Counter, list]) -> Split:
    """The entries read into memory; unreadable (when skipped) and empty clips left out."""
    x = np.empty((len(entries), _length(cfg)), np.float32)
    kept = np.ones(len(entries), dtype=bool)
    for row, (source, _) in enumerate(entries):
        samples = _silence(noise, _length(cfg), source) if not isinstance(source, Path) else _clip(source, cfg, *log)
        if samples is None:
            kept[row] = False
            continue
        x[row] = np.clip(np.rint(samples), -32768, 32767)
    y = np.array([label for _, label in entries], dtype=np.int32)
    return Split(x=x if kept.all() else x[kept], y=y[kept])


def _streamed(entries: list, noise: list[np.ndarray], cfg: DataConfig, skipped: list) -> Split:
    """The entries as a streamed split: empty files are left out now, as reading them in memory would."""
    kept = []
    for source, label in entries:
        if isinstance(source, Path) and source.stat().st_size == 0:
            skipped.append(str(source))
        else:
            kept.append((source, label))
    inputs = streaming.StreamedInputs(sources=tuple(source for source, _ in kept), read=_Reader(cfg, noise),
                                      raw_shape=(_length(cfg),))
    return Split(x=inputs, y=np.array([label for _, label in kept], dtype=np.int32))


class _Reader:
    """One entry's samples as the in-memory path reads them (repairs not counted)."""

    def __init__(self, cfg: DataConfig, noise: list[np.ndarray]):
        self.cfg, self.noise = cfg, noise

    def __call__(self, source) -> np.ndarray:
        if isinstance(source, Path):
            samples = _clip(source, self.cfg, Counter(), [])
            if samples is None:  # a header with no samples: empty, which the listing cannot see
                samples = np.zeros(_length(self.cfg))
        else:
            samples = _silence(self.noise, _length(self.cfg), source)
        return np.clip(np.rint(samples), -32768, 32767).astype(np.float32)


def _clip(path: Path, cfg: DataConfig, repairs: Counter, skipped: list) -> np.ndarray | None:
    samples = _mono(path, cfg, repairs, skipped)
    if samples is None:
        return None
    samples, repair = wav.fit(samples, _length(cfg))
    if repair is not None:
        repairs[repair] += 1
    return samples


def _mono(path: Path, cfg: DataConfig, repairs: Counter, skipped: list) -> np.ndarray | None:
    """A file as one channel at data.sample_rate_hz, or None when it is empty or unreadable and skipped."""
    try:
        samples, rate = (np.zeros((0, 1)), cfg.sample_rate_hz) if path.stat().st_size == 0 else wav.read(path)
    except (wav.WavError, OSError) as error:
        if cfg.skip_unreadable:
            skipped.append(str(path))
            return None
        raise DataError(f"{path}: unreadable WAV ({error}); replace or delete it, or set data.skip_unreadable: true "
                        "to leave such files out (the report counts them)") from None
    if len(samples) == 0:  # nothing to repair: a zero-length recording carries no word
        skipped.append(str(path))
        return None
    if samples.shape[1] > 1:
        repairs["mixed_down"] += 1
    samples = samples.mean(axis=1)
    if rate != cfg.sample_rate_hz:
        repairs["resampled"] += 1
        samples = wav.resample(samples, rate, cfg.sample_rate_hz)
    return samples


def _silence_cut(noise: list[np.ndarray], length: int, rng: np.random.Generator) -> tuple | None:
    """A seeded silence clip: (background file index, start sample, gain), or None when there is no noise."""
    if not noise:
        return None
    index = int(rng.integers(len(noise)))
    start = int(rng.integers(len(noise[index]) - length + 1))
    return index, start, 10 ** (rng.uniform(*SILENCE_GAIN_DB) / 20)


def _silence(noise: list[np.ndarray], length: int, cut: tuple | None) -> np.ndarray:
    if cut is None:
        return np.zeros(length)
    index, start, gain = cut
    return noise[index][start:start + length] * gain


def _length(cfg: DataConfig) -> int:
    return cfg.sample_rate_hz * cfg.clip_ms // 1000
