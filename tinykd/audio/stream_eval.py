"""Judge a keyword model on a stream as a device would run it: front-end features of a sliding window, the int8
model in the TFLite Micro interpreter, then the recognizer (tinykd.audio.stream); count false rejects and false
accepts against the stream's known events.

A keyword said at [start, end] is detected when a detection of its label falls in [start, end + clip_ms +
average_window_ms]: the word stays in the model's input for a clip after it ends, and in the average for a
window after that. Every other detection is a false accept: on silence, noise or another word, a wrong label, or
a second detection of one spoken keyword.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tinykd.audio import stream as recognizer
from tinykd.audio.frontend import FrontendConfig, features, to_int8
from tinykd.data.keyword_stream import Stream
from tinykd.errors import DataError, ModelError, VerificationError

_CHUNK_WINDOWS = 256  # windows per front-end call: bounds memory for hour-long streams
_SECONDS_PER_INFERENCE = 0.5  # the child's time limit per window: far above any Cortex-M-sized model on a host


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """False rejects among the spoken keywords, and false accepts over the stream's length."""

    threshold: float
    keywords: int
    false_rejects: int
    false_accepts: int
    hours: float
    # What the false accepts heard: "unknown" and "noise" events, a "keyword" (a wrong label or a repeat), or
    # "background" (no event within the tolerance before the detection).
    false_accepts_by_kind: tuple[tuple[str, int], ...] = ()
    # Which words: "heard -> detected" per false accept ("lift -> left"; "_background_" when nothing was said), and
    # the keywords missed; most frequent first.
    false_accepts_by_word: tuple[tuple[str, int], ...] = ()
    false_rejects_by_word: tuple[tuple[str, int], ...] = ()
    # (speaker id, keywords missed, keywords said) per speaker, the largest share missed first: the misses of a
    # stream follow its voices more than its words.
    false_rejects_by_speaker: tuple[tuple[str, int, int], ...] = ()

    @property
    def false_reject_rate(self) -> float:
        return self.false_rejects / max(1, self.keywords)

    @property
    def false_accepts_per_hour(self) -> float:
        return self.false_accepts / self.hours


def window_features(samples: np.ndarray, frontend: FrontendConfig, stride_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 features (windows, frames, channels) of the clip ending every `stride_ms`, and those end times in ms.

    Each window's features start from a fresh front-end state, as tinykd computes every training clip and as the
    exported settings tell the device to.
    """
    stride = stride_ms * frontend.sample_rate_hz // 1000
    if len(samples) < frontend.clip_samples:
        raise DataError(f"the stream has {len(samples)} samples, less than one clip ({frontend.clip_samples})")
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(samples, np.int16), frontend.clip_samples)[::stride]
    out = np.empty((len(windows), *frontend.feature_shape), np.int8)
    for start in range(0, len(windows), _CHUNK_WINDOWS):
        chunk = np.ascontiguousarray(windows[start:start + _CHUNK_WINDOWS])
        out[start:start + _CHUNK_WINDOWS] = to_int8(features(chunk, frontend))
    ends_ms = (np.arange(len(windows)) * stride + frontend.clip_samples) * 1000 // frontend.sample_rate_hz
    return out, ends_ms


def tflm_scores(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """The int8 output of `tflite` in the TFLite Micro interpreter for each int8 input, in a child process with a
    time limit (the interpreter can crash or hang on a bad model).

    Raises:
        VerificationError: TFLM cannot load or run the model, or runs past the time limit.
    """
    from tinykd import tflm
    from tinykd.model_file import read
    from tinykd.verify import measure_arena

    shape = read(tflite, source="stream model").inputs[0].shape
    inputs = np.asarray(inputs, np.int8).reshape(len(inputs), *shape[1:])
    try:
        (scores,) = tflm.outputs(tflite, inputs, measure_arena(tflite) + 1024,
                                 time_limit_s=60 + _SECONDS_PER_INFERENCE * len(inputs))
    except ModelError as error:
        raise VerificationError(f"stream model: {error}") from None
    return scores.reshape(len(inputs), -1).astype(np.int8)


def score(detections: Sequence[recognizer.Detection], stream: Stream, labels: Sequence[str],
          tolerance_ms: int, threshold: float) -> Outcome:
    """Match `detections` to the stream's spoken keywords (see the module docstring) and count the errors."""
    said = [event for event in stream.events if event.kind == "keyword"]
    spoken = [(event.start_ms, event.end_ms + tolerance_ms, labels.index(event.word)) for event in said]
    matched = [False] * len(spoken)
    heard = {"keyword": 0, "unknown": 0, "noise": 0, "background": 0}
    confused = Counter()
    for detection in detections:
        hit = next((i for i, (start, end, label) in enumerate(spoken)
                    if not matched[i] and label == detection.label and start <= detection.time_ms <= end), None)
        if hit is not None:
            matched[hit] = True
            continue
        near = [e for e in stream.events if e.start_ms <= detection.time_ms <= e.end_ms + tolerance_ms]
        heard[near[-1].kind if near else "background"] += 1
        confused[f"{near[-1].word if near else '_background_'} -> {labels[detection.label]}"] += 1
    unmatched = [event for event, found in zip(said, matched) if not found]
    missed = Counter(event.word for event in unmatched)
    by_speaker = Counter(event.speaker for event in said)
    missed_by_speaker = Counter(event.speaker for event in unmatched)
    speakers = sorted(by_speaker, key=lambda s: (-missed_by_speaker[s] / by_speaker[s], -by_speaker[s], s))
    return Outcome(threshold=threshold, keywords=len(spoken), false_rejects=matched.count(False),
                   false_accepts=sum(heard.values()), hours=stream.duration_ms / 3_600_000,
                   false_accepts_by_kind=tuple(heard.items()), false_accepts_by_word=tuple(confused.most_common()),
                   false_rejects_by_word=tuple(missed.most_common()),
                   false_rejects_by_speaker=tuple((s, missed_by_speaker[s], by_speaker[s]) for s in speakers))


def sweep(smoothed: recognizer.Smoothed, stream: Stream, labels: Sequence[str], cfg: recognizer.StreamConfig,
          tolerance_ms: int) -> list[Outcome]:
    """The outcome at every threshold from 1/256 to 255/256 (each probability step): a DET curve."""
    keywords = recognizer.keyword_classes(labels)
    return [score(recognizer.detect(smoothed, keywords, level, cfg), stream, labels, tolerance_ms,
                  threshold=level / recognizer.PROBABILITY_ONE)
            for level in range(1, recognizer.PROBABILITY_ONE)]


def listen(tflite: bytes, stream: Stream, frontend: FrontendConfig, cfg: recognizer.StreamConfig
           ) -> recognizer.Smoothed:
    """Run `tflite` over `stream` as the device would (features every `cfg.stride_ms`, TFLM) and average its
    scores; `detect` or `sweep` then give the detections at any threshold.

    Raises:
        DataError: the stream is not at the front-end's sample rate, or shorter than a clip.
        VerificationError: TFLM cannot run the model.
    """
    probabilities, ends_ms = heard(tflite, stream, frontend, cfg.stride_ms)
    return recognizer.smooth(probabilities, ends_ms, cfg)


def heard(tflite: bytes, stream: Stream, frontend: FrontendConfig, stride_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The class probabilities (results x classes, steps of 1/256) of `tflite` in TFLM on the clip ending every
    `stride_ms`, and those end times in ms: everything of `listen` before the averaging, so settings that differ
    only after it (window, count, suppression, threshold) can be compared without running the model again.

    Raises:
        DataError: the stream is not at the front-end's sample rate, or shorter than a clip.
        VerificationError: TFLM cannot run the model.
    """
    from tinykd.model_file import read

    if stream.rate_hz != frontend.sample_rate_hz:
        raise DataError(f"the stream is at {stream.rate_hz} Hz; the front-end reads {frontend.sample_rate_hz} Hz")
    windows, ends_ms = window_features(stream.samples, frontend, stride_ms)
    output = read(tflite, source="stream model").outputs[0]
    return recognizer.probabilities(tflm_scores(tflite, windows), output.scale, output.zero_point), ends_ms
