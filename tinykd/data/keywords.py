"""A synthetic Speech Commands: spoken words from Debian's espeak-ng and flite voices, offline and seeded.

A speaker is one (engine, voice, variant): an espeak-ng English voice with a voice variant (`en-gb-scotland+f3`)
or a flite voice (`slt`). Each speaker gets a base speed and pitch; each clip varies them, is placed at a random
time in the 1 s window at a random level, and gets one of the generated background noises at a random SNR. Whole
speakers are held out: validation and test hear only voices that training never heard. Same seed, same
espeak-ng/flite versions: byte-identical files, whatever `jobs` is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinykd.config import HELD_OUT_SPLITS
from tinykd.data import wav
from tinykd.data.speech_commands import BACKGROUND, LIST_FILES
from tinykd.errors import DataError

RATE_HZ = 16000
CLIP_SAMPLES = RATE_HZ  # 1 s
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# The `_unknown_` pool: near misses of the keywords, then Speech Commands' own auxiliary words. Homophones of a
# keyword ("know", "write") are left out: no model can tell them apart, so they would only be label noise.
NEAR_MISSES = ("yet", "yeah", "nose", "snow", "cup", "town", "dawn", "lift", "light", "bright", "own", "of", "top",
               "stock", "goal")
OTHER_WORDS = NEAR_MISSES + ("bed", "bird", "cat", "dog", "tree", "house", "happy", "wow", "zero", "four", "nine")
ESPEAK_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt",
                   "klatt2", "klatt3", "whisper", "Andy", "Annie", "aunty", "belinda", "david", "edward", "grandpa",
                   "linda", "steph", "travis")
FLITE_VOICES = {"kal": (85.0, 130.0), "kal16": (85.0, 130.0), "awb": (90.0, 140.0), "rms": (85.0, 130.0),
                "slt": (150.0, 230.0)}  # voice -> range of its mean pitch in Hz
POOL = len(ESPEAK_VOICES) * len(ESPEAK_VARIANTS) + len(FLITE_VOICES)  # distinct speakers there can be: 229
FLITE_EVERY = 8  # every eighth speaker is a flite voice (there are five); the rest are espeak-ng
NOISES = ("white", "pink", "brown", "hum", "babble", "fan")
NOISE_SECONDS = 30
NOISE_RMS = 3277.0  # -20 dBFS; silence clips scale cuts of these files down from here
SNR_DB = (5.0, 30.0)
PEAK_DBFS = (-26.0, -3.0)  # speech peak; the noise on top must rarely clip
HELD_OUT_SHARE = 0.1  # of the speakers, for validation and again for test
DEFAULT_SPEAKERS = 128
DEFAULT_NEAR_MISS_CLIPS = 3  # as many as of a keyword: with one, a stream's false accepts were mostly these words
SETTINGS_FILE = "synthesis.json"  # what the set was made with, so a recipe asking for another set can tell
INSTALL = "install them with `sudo apt-get install espeak-ng flite` (Debian/Ubuntu)"


# `synthesize`'s extend step: (the half-written set's folder, training speakers, noises) -> settings to record.
Extend = Callable[[Path, list, dict], dict]


@dataclass(frozen=True)
class Speaker:
    engine: str
    voice: str
    variant: str = ""

    @property
    def id(self) -> str:
        """Eight hex digits, like the speaker ids of the real data set."""
        return hashlib.sha1(f"{self.engine}:{self.voice}:{self.variant}".encode()).hexdigest()[:8]

    @property
    def name(self) -> str:
        """The voice as its engine calls it: `espeak-ng en-029+whisper`, `flite kal16`."""
        return f"{self.engine} {self.voice}+{self.variant}" if self.variant else f"{self.engine} {self.voice}"


@dataclass(frozen=True, kw_only=True)
class Summary:
    """What `synthesize` wrote: spoken clips per kind, speakers per split and the noise files."""

    out_dir: Path
    keyword_clips: int
    other_clips: int
    speakers: tuple[tuple[str, int], ...]
    noise_files: tuple[str, ...]
    extended: dict  # the settings an `extend` step recorded, empty without one

    @property
    def clips(self) -> int:
        return self.keyword_clips + self.other_clips


def synthesize(out_dir: str | Path, *, seed: int = 0, speakers: int = DEFAULT_SPEAKERS,
               extra_train_speakers: int = 0, clips_per_speaker_word: int = 3,
               near_miss_clips: int = DEFAULT_NEAR_MISS_CLIPS, held_out: str = "random",
               flite_clip_factor: int = 1, train_word_clips: dict[str, int] | None = None,
               extend: Extend | None = None, jobs: int | None = None) -> Summary:
    """Write a keyword dataset in the Speech Commands layout to `out_dir` (which must not exist or be empty).

    Args:
        seed: decides voices, splits, every random choice per clip and the noise; same seed, same bytes.
        speakers: how many (engine, voice, variant) speakers, at least 3; 10% each are validation and test.
        extra_train_speakers: more speakers, for training only: the held-out speakers (and so the validation and
            test clips, and `tinykd data stream`'s voices) stay those of `speakers` alone.
        clips_per_speaker_word: clips of each keyword per speaker.
        near_miss_clips: clips of each NEAR_MISSES word per speaker: the words a stream's false accepts come
            from (`lift` -> left), which training can then show more often (data.train_unknown_fraction). The
            auxiliary words get one each. Clip n of a word is the same file whatever this is, so a larger value
            only adds clips.
        held_out: how the validation and test speakers are drawn from `speakers` (split_speakers): "random",
            or "matched" so that both splits hold the same kinds of voices.
        flite_clip_factor: each flite voice in training says this many times the clips of every word. The pool
            has 5 flite voices to 224 of espeak-ng, so flite is 3 or 4 of 203 training voices, under 2% of the
            clips; 8 makes it 11-14%, near the eighth of speakers FLITE_EVERY meant. Held-out voices say the
            usual number, so validation, test and the streams stay as they were.
        train_word_clips: word -> clips of it per training speaker, in place of the counts above, to train more
            on the words a stream misses most (`off`, `down`); held-out voices say the usual number, as above.
        extend: a step that adds training clips to the half-written set before it is renamed into place, called
            with its folder, the training speakers and the noises; the settings it returns are recorded with the
            synthesizer's (keyword_stream.stream_windows cuts clips from a stream of the training speakers).
        jobs: engine processes at once; default os.cpu_count().

    Raises:
        DataError: espeak-ng or flite missing, a bad argument, `out_dir` not empty, or an engine failing.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    _check(out_dir, speakers, clips_per_speaker_word, near_miss_clips, jobs)
    train_word_clips = dict(sorted((train_word_clips or {}).items()))
    for word, count in train_word_clips.items():
        if word not in KEYWORDS + OTHER_WORDS:
            raise DataError(f"train_word_clips: {word!r} is not a word the synthesizer speaks; use one of "
                            f"{', '.join(KEYWORDS + OTHER_WORDS)}")
        if count < 1:
            raise DataError(f"train_word_clips: {word}={count} is below 1; every word needs at least one clip")
    if not 0 <= extra_train_speakers <= POOL - speakers:
        raise DataError(f"extra_train_speakers: {extra_train_speakers} is out of range; the pool has {POOL} speakers, "
                        f"so with speakers: {speakers} use 0 to {POOL - speakers}")
    if seed < 0:
        raise DataError(f"seed: {seed} is negative; use 0 or more")
    if flite_clip_factor < 1:
        raise DataError(f"flite_clip_factor: {flite_clip_factor} is less than 1; use 1 (as many clips as any voice) "
                        "or more")
    chosen = choose_speakers(speakers + extra_train_speakers, seed)  # the first `speakers` whatever the extra
    split_of = split_speakers(chosen[:speakers], seed, held_out)
    split_of |= {speaker: "train" for speaker in chosen[speakers:]}
    partial = out_dir.with_name(f".{out_dir.name}.partial")  # renamed when complete, so no reader sees half of it
    if partial.exists():
        shutil.rmtree(partial)
    (partial / BACKGROUND).mkdir(parents=True)

    def clip_count(speaker: Speaker, word: str) -> int:  # clip n of a word is the same file whatever the count
        count = clips_per_speaker_word if word in KEYWORDS else near_miss_clips if word in NEAR_MISSES else 1
        if split_of[speaker] != "train":
            return count
        count = train_word_clips.get(word, count)
        return count * flite_clip_factor if speaker.engine == "flite" else count

    clips = [(speaker, word, number) for speaker in chosen for word in KEYWORDS + OTHER_WORDS
             for number in range(clip_count(speaker, word))]
    extended: dict = {}
    try:
        noises = _write(partial, clips, seed, jobs)
        if extend is not None:
            extended = extend(partial, [speaker for speaker in chosen if split_of[speaker] == "train"], noises)
    except BaseException:  # an engine failed or the user interrupted: leave no half-written dataset behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for split, list_name in LIST_FILES.items():
        lines = sorted(_name(*clip) for clip in clips if split_of[clip[0]] == split)
        (partial / list_name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    settings = {"seed": seed, "speakers": speakers, "extra_train_speakers": extra_train_speakers,
                "clips_per_speaker_word": clips_per_speaker_word, "near_miss_clips": near_miss_clips,
                "held_out": held_out, "flite_clip_factor": flite_clip_factor, **extended}
    if train_word_clips:  # recorded only when given, so the sets made before read as they were
        settings["train_word_clips"] = train_word_clips
    (partial / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    partial.rename(out_dir)
    keyword_clips = sum(1 for _, word, _ in clips if word in KEYWORDS)
    counts = tuple((split, sum(1 for s in chosen if split_of[s] == split)) for split in ("train", "val", "test"))
    return Summary(out_dir=out_dir, keyword_clips=keyword_clips, other_clips=len(clips) - keyword_clips,
                   speakers=counts, noise_files=tuple(noise_file(name) for name in noises), extended=extended)


def check_made_with(root: Path, extra_train_speakers: int, held_out: str, flite_clip_factor: int = 1,
                    train_stream_minutes: float = 0, train_word_clips: dict[str, int] | None = None) -> None:
    """Raise DataError when the keyword set at `root`, synthesized before, was made with another number of
    training-only speakers, another held-out split, another flite clip factor, other training-stream minutes or
    other word counts than a recipe asks for (data.extra_train_speakers, data.held_out_speakers,
    data.flite_clip_factor, data.train_stream_minutes, data.train_word_clips). A set without SETTINGS_FILE but with
    our noise files predates them all: none extra, held out at random, factor 1, no stream, the usual counts; a
    folder without our noise files is someone's real data and passes."""
    settings = made_with_settings(root)
    if settings is None and not (root / noise_file("babble")).is_file():
        return  # real Speech Commands has no babble; every set made here has
    settings = settings or {}
    made_with = {"extra_train_speakers": settings.get("extra_train_speakers", 0),
                 "held_out_speakers": settings.get("held_out", "random"),
                 "flite_clip_factor": settings.get("flite_clip_factor", 1),
                 "train_stream_minutes": settings.get("train_stream_minutes", 0),
                 "train_word_clips": _as_pairs(settings.get("train_word_clips", {}))}
    asked = {"extra_train_speakers": extra_train_speakers, "held_out_speakers": held_out,
             "flite_clip_factor": flite_clip_factor, "train_stream_minutes": train_stream_minutes,
             "train_word_clips": _as_pairs(train_word_clips or {})}
    for key, value in asked.items():
        if made_with[key] != value:
            raise DataError(f"data.path: {root} holds a keyword set synthesized with data.{key}: {made_with[key]}, "
                            f"but the recipe asks for {value}; delete the folder and the build synthesizes it "
                            f"again, or set data.{key}: {made_with[key]} to train on it as it is")


def _as_pairs(word_clips: dict[str, int]) -> list[str]:
    """{"up": 6, "off": 6} -> ["off=6", "up=6"], as data.train_word_clips is written."""
    return sorted(f"{word}={count}" for word, count in word_clips.items())


def made_with_settings(root: Path) -> dict | None:
    """What `tinykd data keywords` made the set at `root` with (its SETTINGS_FILE), or None for a set without one."""
    path = root / SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def noise_file(name: str) -> str:
    """Where noise `name` (one of NOISES) is written in a set, relative to its root."""
    return f"{BACKGROUND}/{name}_noise.wav"


def choose_speakers(count: int, seed: int) -> list[Speaker]:
    """`count` distinct speakers: every FLITE_EVERY-th a flite voice, the rest espeak-ng voice+variant pairs."""
    rng = np.random.default_rng([seed, 0])
    espeak = [Speaker("espeak-ng", voice, variant) for voice in ESPEAK_VOICES for variant in ESPEAK_VARIANTS]
    espeak = [espeak[i] for i in rng.permutation(len(espeak))]
    flite = [Speaker("flite", list(FLITE_VOICES)[i]) for i in rng.permutation(len(FLITE_VOICES))]
    chosen = []
    while len(chosen) < count:
        use_flite = bool(flite) and (len(chosen) % FLITE_EVERY == 0 or not espeak)
        chosen.append(flite.pop(0) if use_flite else espeak.pop(0))
    return chosen


def split_speakers(chosen: list[Speaker], seed: int, held_out: str = "random") -> dict[Speaker, str]:
    """Each speaker's split: "val" or "test" for a HELD_OUT_SHARE each (at least one), "train" for the rest.

    `held_out` (one of HELD_OUT_SPLITS) says how those are drawn: "random" from all of `chosen`; "matched" as
    twins, two speakers of one kind of voice (`voice_kind`: engine and variant) at a time, one for validation and
    one for test, the kinds and twins at random: each split then holds the same kinds of voice, so a threshold
    chosen on validation voices is chosen on voices like the test ones.

    Raises:
        DataError: `held_out` is not one of HELD_OUT_SPLITS, or `chosen` has too few kinds with two speakers.
    """
    if held_out not in HELD_OUT_SPLITS:
        raise DataError(f"held_out: {held_out!r} is not one of {', '.join(HELD_OUT_SPLITS)}")
    order = np.random.default_rng([seed, 1]).permutation(len(chosen))
    count = max(1, round(HELD_OUT_SHARE * len(chosen)))
    if held_out == "random":
        return {chosen[i]: "val" if rank < count else "test" if rank < 2 * count else "train"
                for rank, i in enumerate(order)}
    kinds: dict[tuple[str, str], list[Speaker]] = {}
    for i in order:  # kinds in the order their first speaker comes, speakers in random order within a kind
        kinds.setdefault(voice_kind(chosen[i]), []).append(chosen[i])
    twins = [speakers[:2] for speakers in kinds.values() if len(speakers) >= 2][:count]
    if len(twins) < count:
        needed = "a kind" if count == 1 else f"{count} kinds"
        raise DataError(f"held_out: matched needs {needed} of voice with two speakers each among "
                        f"{len(chosen)} speakers, and there are {len(twins)}; use more speakers or held_out: random")
    split_of = dict.fromkeys(chosen, "train")
    for val, test in twins:
        split_of[val], split_of[test] = "val", "test"
    return split_of


def voice_kind(speaker: Speaker) -> tuple[str, str]:
    """The kind of voice a speaker has: its engine and espeak-ng's variant (m1, whisper, steph, ...; "" for a
    voice's own and for every flite voice), whatever the language voice or flite voice under it."""
    return speaker.engine, speaker.variant


def generate_noises(seed: int) -> dict[str, np.ndarray]:
    """NOISE_SECONDS of each kind in NOISES at NOISE_RMS: coloured noises, mains hum, babble and a fan."""
    rng = np.random.default_rng([seed, 2])
    count = RATE_HZ * NOISE_SECONDS
    frequency = np.maximum(np.fft.rfftfreq(count, 1.0 / RATE_HZ), 1.0)
    time = np.arange(count) / RATE_HZ

    def shaped(gain: np.ndarray) -> np.ndarray:
        return np.fft.irfft(np.fft.rfft(rng.standard_normal(count)) * gain, count)

    def tones(base_hz: float, harmonics: int, fall: float) -> np.ndarray:
        return sum(fall ** k * np.sin(2 * np.pi * base_hz * (k + 1) * time + rng.uniform(0, 2 * np.pi))
                   for k in range(harmonics))

    def unit(samples: np.ndarray) -> np.ndarray:
        return samples / samples.std()

    def syllables() -> np.ndarray:  # a talker's loudness: slow (< 5 Hz) bursts, silent in between
        envelope = shaped((frequency < 5.0).astype(float))
        return np.maximum(envelope / envelope.std(), 0.0) ** 1.5

    speech_band = ((frequency > 250) & (frequency < 3500)) / np.sqrt(frequency)
    noises = {
        "white": rng.standard_normal(count),
        "pink": shaped(1.0 / np.sqrt(frequency)),
        "brown": shaped((frequency > 20) / frequency),
        "hum": tones(50.0, 8, 0.6) + 0.02 * rng.standard_normal(count),
        "babble": sum(syllables() * unit(shaped(speech_band)) for _ in range(6))  # six talkers over room tone
                  + 0.3 * unit(shaped(1.0 / np.sqrt(frequency))),
        "fan": unit(shaped(1.0 / (1.0 + (frequency / 400.0) ** 2)))  # airflow, and the blades' wobbling whine
               + 0.4 * unit((1.0 + 0.2 * np.sin(2 * np.pi * 0.3 * time)) * tones(120.0, 4, 0.5)),
    }
    return {name: samples * (NOISE_RMS / samples.std()) for name, samples in noises.items()}


def _write(partial: Path, clips: list, seed: int, jobs: int | None) -> dict[str, np.ndarray]:
    """The noise files, then every clip, the engines running `jobs` at a time; returns the noises."""
    noises = generate_noises(seed)
    for name, samples in noises.items():
        wav.write(partial / noise_file(name), samples, RATE_HZ)
    for word in KEYWORDS + OTHER_WORDS:
        (partial / word).mkdir()
    with tempfile.TemporaryDirectory(prefix="tinykd-tts-") as scratch, \
            ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        list(pool.map(lambda clip: _render(*clip, seed, noises, partial, Path(scratch)), clips))
    return noises


def _name(speaker: Speaker, word: str, number: int) -> str:
    return f"{word}/{speaker.id}_nohash_{number}.wav"


def _check(out_dir: Path, speakers: int, clips_per_speaker_word: int, near_miss_clips: int,
           jobs: int | None) -> None:
    missing = [engine for engine in ("espeak-ng", "flite") if shutil.which(engine) is None]
    if missing:
        raise DataError(f"{' and '.join(missing)} not found: the keyword synthesizer runs espeak-ng and flite; "
                        f"{INSTALL}")
    if not 3 <= speakers <= POOL:
        raise DataError(f"speakers: {speakers} is out of range; use 3 to {POOL} (one train, validation and "
                        "test speaker at least)")
    if clips_per_speaker_word < 1 or (jobs is not None and jobs < 1):
        raise DataError("clips_per_speaker_word and jobs must be at least 1")
    if near_miss_clips < 1:
        raise DataError(f"near_miss_clips: {near_miss_clips} is below 1; every word needs at least one clip")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: already exists and is not an empty folder; choose a new folder or delete it")


def _render(speaker: Speaker, word: str, number: int, seed: int, noises: dict[str, np.ndarray], root: Path,
            scratch: Path) -> None:
    """Speak one clip and fit it into the window with a random shift, level and noise."""
    voice = np.random.default_rng([seed, 3, int(speaker.id, 16)])  # the speaker's own speed and pitch
    rng = np.random.default_rng([seed, 4, int(speaker.id, 16), int(hashlib.sha1(word.encode()).hexdigest()[:8], 16),
                                 number])
    spoken = _speak(speaker, word, voice, rng, scratch / f"{speaker.id}-{word}-{number}.wav")
    loud = np.flatnonzero(np.abs(spoken) > 0.05 * np.abs(spoken).max())
    margin = RATE_HZ // 50  # 20 ms either side of the loud part keeps soft onsets and endings
    spoken = spoken[max(0, loud[0] - margin): loud[-1] + margin]
    spoken = wav.fit(spoken, CLIP_SAMPLES)[0] if len(spoken) > CLIP_SAMPLES else spoken
    spoken = spoken * (10 ** (rng.uniform(*PEAK_DBFS) / 20) * 32767 / np.abs(spoken).max())
    clip = np.zeros(CLIP_SAMPLES)
    start = int(rng.integers(CLIP_SAMPLES - len(spoken) + 1))
    clip[start:start + len(spoken)] = spoken
    noise = noises[NOISES[rng.integers(len(NOISES))]]
    offset = int(rng.integers(len(noise) - CLIP_SAMPLES + 1))
    cut = noise[offset:offset + CLIP_SAMPLES]
    speech_rms = np.sqrt(np.mean(spoken ** 2))
    clip += cut * (speech_rms / 10 ** (rng.uniform(*SNR_DB) / 20) / max(cut.std(), 1e-9))
    wav.write(root / _name(speaker, word, number), clip, RATE_HZ)


def _speak(speaker: Speaker, word: str, voice: np.random.Generator, rng: np.random.Generator,
           path: Path) -> np.ndarray:
    """The engine's recording of `word`, mono at RATE_HZ, at the speaker's speed and pitch varied per clip."""
    if speaker.engine == "espeak-ng":
        speed = voice.uniform(140, 200) * rng.uniform(0.85, 1.15)  # words per minute; espeak-ng's default is 175
        pitch = np.clip(voice.uniform(25, 75) + rng.uniform(-8, 8), 0, 99)
        name = f"{speaker.voice}+{speaker.variant}" if speaker.variant else speaker.voice
        command = ["espeak-ng", "-v", name, "-s", str(int(speed)), "-p", str(int(pitch)), "-z", "-w", str(path),
                   word]
    else:
        stretch = voice.uniform(0.9, 1.15) * rng.uniform(0.85, 1.15)
        low, high = FLITE_VOICES[speaker.voice]
        pitch = voice.uniform(low, high) * rng.uniform(0.92, 1.08)
        command = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={stretch:.3f}", "--setf",
                   f"int_f0_target_mean={pitch:.1f}", "-t", word, "-o", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise DataError(f"{command[0]} not found; {INSTALL}") from None
    if result.returncode != 0 or not path.is_file():
        raise DataError(f"`{' '.join(command)}` failed ({result.stderr.strip() or f'exit {result.returncode}'}); "
                        f"check that the voice exists (`espeak-ng --voices=en`, `flite -lv`) or reinstall: {INSTALL}")
    try:
        samples, rate = wav.read(path)
    except wav.WavError as error:
        raise DataError(f"`{' '.join(command)}` wrote an unreadable WAV ({error}); reinstall: {INSTALL}") from None
    path.unlink()
    samples = samples.mean(axis=1)
    if len(samples) == 0 or not np.abs(samples).max() > 0:
        raise DataError(f"`{' '.join(command)}` wrote silence; check the voice with `espeak-ng --voices=en` or "
                        "`flite -lv`")
    return wav.resample(samples, rate, RATE_HZ)
