"""A long evaluation stream for keyword spotting: held-out speakers saying keywords and other words over changing
background noise, with noise bursts, every event at a known time.

The speakers are those `tinykd data keywords` holds out for the split (same seed, same speaker count), so a model
trained on that data set never heard them. The background noises are fresh recordings of the data set's kinds
(another seed), not the files training mixed in. Same seed, same espeak-ng/flite versions: the same samples.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinykd import artifacts
from tinykd.data import keywords, wav
from tinykd.data.keywords import KEYWORDS, NOISES, OTHER_WORDS, PEAK_DBFS, RATE_HZ, SNR_DB
from tinykd.errors import DataError

KINDS = ("keyword", "unknown", "noise")
KIND_SHARES = (0.5, 0.3, 0.2)  # of the events
GAP_MS = (1500, 3000)  # background alone before each event
BACKGROUND_SEGMENT_MS = (5000, 20000)  # the background changes kind and level this often
BACKGROUND_DBFS = (-60.0, -35.0)  # RMS of the background, a quiet room to a busy one
BURST_MS = (300, 1500)
BURST_DB = (6.0, 20.0)  # a burst's level over the background
FADE_MS = 20
SPLITS = ("val", "test")
_NOISE_SEED_OFFSET = 1_000_003  # fresh noise recordings: the data set's own use generate_noises(seed)
# Training windows (`training_windows`): how many 1 s windows are cut around each event of a training stream.
WINDOWS_PER_EVENT = {"keyword": 3, "unknown": 2, "noise": 1}
_TRAINING_STREAM = 7  # its plan's draws, beside SPLITS' indices 0 and 1 for the evaluation streams
_TRAINING_VOICE_SEED_OFFSET = 77  # its words and each speaker's base speed and pitch: other draws than the clips'
STREAMED_FOLDER = "streamed"  # the training windows that hold no keyword: `_unknown_`, as every non-keyword folder


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something heard in the stream: a keyword, another word ("unknown") or a noise burst, from start to end."""

    kind: str
    word: str  # the word, or the burst's noise kind
    start_ms: int
    end_ms: int
    speaker: str = ""  # the speaker id of a word


@dataclass(frozen=True, kw_only=True, eq=False)
class Stream:
    """int16 samples at `rate_hz`, the events in time order, and where the speakers come from."""

    samples: np.ndarray
    rate_hz: int
    events: tuple[Event, ...]
    split: str
    seed: int
    speakers: tuple[str, ...]

    @property
    def duration_ms(self) -> int:
        return len(self.samples) * 1000 // self.rate_hz

    def composition(self) -> dict:
        """Event counts per kind, the keywords and noises heard, and the stream length."""
        return {"duration_ms": self.duration_ms, "speakers": len(self.speakers),
                **{f"{kind}_events": sum(1 for e in self.events if e.kind == kind) for kind in KINDS},
                "keywords": sorted({e.word for e in self.events if e.kind == "keyword"})}


def make_stream(minutes: float, *, split: str = "test", seed: int = 0, speakers: int = keywords.DEFAULT_SPEAKERS,
                held_out: str = "random", jobs: int | None = None) -> Stream:
    """Synthesize `minutes` of stream spoken by the `split` speakers of `tinykd data keywords --seed seed
    --speakers speakers --held-out held_out`.

    Raises:
        DataError: espeak-ng or flite missing or failing, or a bad argument.
    """
    if split not in SPLITS or not minutes > 0:
        raise DataError(f"stream: split {split!r} must be one of {', '.join(SPLITS)} and minutes ({minutes}) "
                        "positive")
    chosen = keywords.choose_speakers(speakers, seed)
    split_of = keywords.split_speakers(chosen, seed, held_out)
    voices = [speaker for speaker in chosen if split_of[speaker] == split]
    rng = np.random.default_rng([seed, 10, SPLITS.index(split)])
    plan = _plan(int(minutes * 60_000), rng, voices)
    with tempfile.TemporaryDirectory(prefix="tinykd-stream-") as scratch, \
            ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        spoken = list(pool.map(lambda item: _spoken(item, seed, Path(scratch)), enumerate(plan["words"])))
    samples, events = _mix(plan, spoken, rng, keywords.generate_noises(seed + _NOISE_SEED_OFFSET))
    return Stream(samples=samples, rate_hz=RATE_HZ, events=events, split=split, seed=seed,
                  speakers=tuple(speaker.id for speaker in voices))


def stream_windows(minutes: float, seed: int, jobs: int | None = None) -> keywords.Extend | None:
    """`keywords.synthesize`'s extend step that cuts training clips from `minutes` of stream of the training speakers
    (`training_windows`) and records `train_stream_minutes` and the windows per folder; None for 0 minutes.

    Raises:
        DataError: `minutes` is negative.
    """
    if not minutes >= 0:
        raise DataError(f"train_stream_minutes: {minutes} is negative; use 0 (none) or more")
    if not minutes:
        return None

    def extend(root: Path, voices: list, noises: dict[str, np.ndarray]) -> dict:
        written = training_windows(root, minutes, voices, seed, noises, jobs)
        return {"train_stream_minutes": minutes, "train_stream_windows": written}
    return extend


def training_windows(root: Path, minutes: float, voices: list, seed: int, noises: dict[str, np.ndarray],
                     jobs: int | None = None) -> dict[str, int]:
    """Cut 1 s training clips from `minutes` of stream spoken by `voices` (training speakers) over `noises` (the
    data set's own) and write them into `root`'s word folders, as a device hears words: anywhere in its window,
    cut short by the speaker, over the background a stream changes. Each keyword is cut WINDOWS_PER_EVENT times,
    whole, at random places in the window, into its own folder; each other word, whole, and each noise burst, at
    least half of it, into STREAMED_FOLDER (so `_unknown_`). Returns the windows written per folder.

    The words are spoken afresh (not the set's clips), each speaker at a base speed and pitch of its own drawn for
    the stream. The same seed, voices and engine versions give the same files, whatever `jobs` is.
    """
    rng = np.random.default_rng([seed, 10, _TRAINING_STREAM])
    plan = _plan(int(minutes * 60_000), rng, voices)
    voice_seed = seed + _TRAINING_VOICE_SEED_OFFSET
    with tempfile.TemporaryDirectory(prefix="tinykd-stream-") as scratch, \
            ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        spoken = list(pool.map(lambda item: _spoken(item, voice_seed, Path(scratch)), enumerate(plan["words"])))
    samples, events = _mix(plan, spoken, rng, noises)
    cuts = np.random.default_rng([seed, 11])  # where each window starts
    written: dict[str, int] = {}
    number = 0
    for event in events:
        if event.kind == "noise":  # at least half of the burst, or of its first second
            half = min(event.end_ms - event.start_ms, 1000) // 2
            low, high = max(0, event.start_ms + half - 1000), event.end_ms - half
        else:  # the whole word; a word longer than a window is centred in it
            low, high = max(0, event.end_ms - 1000), event.start_ms
            if high < low:
                low = high = max(0, (event.start_ms + event.end_ms) // 2 - 500)
        folder = event.word if event.kind == "keyword" else STREAMED_FOLDER
        for _ in range(WINDOWS_PER_EVENT[event.kind]):
            number += 1
            start = int(cuts.integers(low, high + 1)) * RATE_HZ // 1000
            window = samples[start:start + RATE_HZ]
            if len(window) == RATE_HZ:
                (root / folder).mkdir(exist_ok=True)
                wav.write(root / folder / f"f{number:07x}_nohash_0.wav", window.astype(np.float64), RATE_HZ)
                written[folder] = written.get(folder, 0) + 1
    return written


def write_stream(stream: Stream, path: Path) -> tuple[Path, Path]:
    """`path` (a mono 16-bit WAV) and beside it `<stem>.json` with the events; each written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        wav.write(Path(temporary), stream.samples, stream.rate_hz)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    labels = {"audio": path.name, "rate_hz": stream.rate_hz, "split": stream.split, "seed": stream.seed,
              "speakers": list(stream.speakers), "composition": stream.composition(),
              "events": [asdict(event) for event in stream.events]}
    return path, artifacts.write_json(path.with_suffix(".json"), labels)


def read_stream(path: Path) -> Stream:
    """The stream `write_stream` wrote to `path` (the WAV; its `.json` beside it).

    Raises:
        DataError: either file is missing or unreadable.
    """
    path = Path(path)
    try:
        labels = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        samples, rate = wav.read(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the stream or its .json ({error}); make it with "
                        "`tinykd data stream`") from None
    return Stream(samples=samples[:, 0].astype(np.int16), rate_hz=rate, split=labels["split"], seed=labels["seed"],
                  events=tuple(Event(**event) for event in labels["events"]), speakers=tuple(labels["speakers"]))


def _plan(duration_ms: int, rng: np.random.Generator, voices: list) -> dict:
    """The events' kinds, words, speakers and the gaps before them, drawn until the stream is full."""
    words, slots, elapsed = [], [], 0
    while elapsed < duration_ms - GAP_MS[1] - 2000:
        gap = int(rng.integers(GAP_MS[0], GAP_MS[1] + 1))
        kind = KINDS[rng.choice(len(KINDS), p=KIND_SHARES)]
        if kind == "noise":
            slots.append((gap, kind, NOISES[rng.integers(len(NOISES))], int(rng.integers(*BURST_MS))))
        else:
            pool = KEYWORDS if kind == "keyword" else OTHER_WORDS
            words.append((voices[rng.integers(len(voices))], pool[rng.integers(len(pool))]))
            slots.append((gap, kind, len(words) - 1, None))
        elapsed += gap + 1000  # a word or burst takes up to about a second
    return {"duration_ms": duration_ms, "words": words, "slots": slots}


def _spoken(item: tuple[int, tuple], seed: int, scratch: Path) -> np.ndarray:
    """One word of the plan, spoken at the speaker's own speed and pitch, cut to its loud part (unit peak)."""
    index, (speaker, word) = item
    voice = np.random.default_rng([seed, 3, int(speaker.id, 16)])
    rng = np.random.default_rng([seed, 12, index])
    spoken = keywords._speak(speaker, word, voice, rng, scratch / f"{index}.wav")
    loud = np.flatnonzero(np.abs(spoken) > 0.05 * np.abs(spoken).max())
    margin = RATE_HZ // 50
    spoken = spoken[max(0, loud[0] - margin): loud[-1] + margin][:RATE_HZ]
    return spoken / np.abs(spoken).max()


def _mix(plan: dict, spoken: list, rng: np.random.Generator, noises: dict) -> tuple[np.ndarray, tuple[Event, ...]]:
    """Lay the background, then each word or burst after its gap; returns int16 samples and the events."""
    total = plan["duration_ms"] * RATE_HZ // 1000
    out = np.zeros(total)
    bed_rms = np.zeros(total)
    start = 0
    while start < total:  # background segments: a random cut of a noise kind at a random level
        length = min(total - start, int(rng.integers(*BACKGROUND_SEGMENT_MS)) * RATE_HZ // 1000)
        level = 32768 * 10 ** (rng.uniform(*BACKGROUND_DBFS) / 20)
        out[start:start + length] = _noise_cut(noises, NOISES[rng.integers(len(NOISES))], length, rng) * level
        bed_rms[start:start + length] = level
        start += length
    events, at = [], 0
    for gap, kind, what, burst_ms in plan["slots"]:
        at += gap * RATE_HZ // 1000
        if kind == "noise":
            sound = _noise_cut(noises, what, burst_ms * RATE_HZ // 1000, rng) * _fade(burst_ms * RATE_HZ // 1000)
            gain = bed_rms[at] * 10 ** (rng.uniform(*BURST_DB) / 20)
            word, speaker = what, ""
        else:
            sound = spoken[what]
            # The training clips' peak level, raised where needed to their lowest signal-to-noise ratio.
            lowest = bed_rms[at] * 10 ** (SNR_DB[0] / 20) / np.sqrt(np.mean(sound ** 2))
            gain = min(max(32767 * 10 ** (rng.uniform(*PEAK_DBFS) / 20), lowest), 32767 * 10 ** (PEAK_DBFS[1] / 20))
            speaker, word = plan["words"][what][0].id, plan["words"][what][1]
        out[at:at + len(sound)] += gain * sound
        events.append(Event(kind=kind, word=word, start_ms=at * 1000 // RATE_HZ,
                            end_ms=-(-(at + len(sound)) * 1000 // RATE_HZ), speaker=speaker))
        at += len(sound)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16), tuple(events)


def _noise_cut(noises: dict, kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of a noise kind at unit RMS, from a random offset, looping the recording if needed."""
    source = noises[kind] / np.std(noises[kind])
    offset = int(rng.integers(len(source)))
    return np.resize(np.roll(source, -offset), length)


def _fade(length: int) -> np.ndarray:
    ramp = min(length // 2, FADE_MS * RATE_HZ // 1000)
    envelope = np.ones(length)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[length - ramp:] = np.linspace(1.0, 0.0, ramp)
    return envelope
