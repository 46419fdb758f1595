"""Keyword spotting on a stream: what a device does with the model's scores, as micro_speech's RecognizeCommands.

The device runs the model every `stride_ms` on the last clip of features, turns its int8 output into class
probabilities, averages them over the results of the last `average_window_ms`, and reports a keyword when the top
averaged class is a keyword whose mean probability reaches `threshold`, at least `min_count` results are in the
window and no keyword was reported in the last `suppression_ms`. The same rules, in integer arithmetic so the two
cannot round differently, are generated into `<name>_recognizer.h` for the firmware (`recognizer_header`), with
the settings in `<name>_model_settings.h` (`stream_defines`).

Probabilities are whole steps of 1/256 (0 to 255). tinykd's models output int8 logits; their softmax is taken in
integers with a table of exp(-d * output_scale) for the 256 possible differences d from the largest logit
(`EXP_ONE` is exp(0)), written into the header from the same numbers. A model whose output already is TFLite's
int8 softmax (scale 1/256, zero point -128) is used as it is.

Unlike micro_speech, suppression holds for every keyword (micro_speech lets a different label fire at once, which
turns one spoken word into two detections when the averaged top class flips), and `_silence_` / `_unknown_` never
count as detections. The averaging window is also bounded by a result count (`StreamConfig.capacity`), the size
of the device's ring buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Sequence

import numpy as np

from tinykd.config import StreamConfig  # noqa: F401 - the stream section's settings, named here too
from tinykd.errors import DataError


PROBABILITY_ONE = 256  # probabilities are whole steps of 1/256, capped at 255
EXP_ONE = 65535  # exp(0) in the softmax table: the largest a uint16 holds, so a sum of 255 classes fits int32
LISTENING_BUSY_LIMIT = 0.8  # of a stride the model may take at its latency's high end; the rest is the front-end's


@dataclass(frozen=True, kw_only=True, eq=False)
class Smoothed:
    """Per result: the top class of the averaged window, its probability sum (steps of 1/256, summed over the
    window) and how many results the window held."""

    times_ms: np.ndarray
    top: np.ndarray
    top_sum: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class Detection:
    time_ms: int
    label: int  # class index
    mean_level: float  # averaged probability of that class, in steps of 1/256


def threshold_level(threshold: float) -> int:
    """`threshold` as a whole number of probability steps (1/256): the least level reaching it."""
    return math.ceil(round(threshold * PROBABILITY_ONE, 6))


def outputs_logits(output_scale: float, zero_point: int) -> bool:
    """Whether an int8 output is logits, i.e. not TFLite's int8 softmax (scale 1/256, zero point -128)."""
    return not (output_scale == 1.0 / PROBABILITY_ONE and zero_point == -128)


def exp_table(output_scale: float) -> np.ndarray:
    """round(EXP_ONE * exp(-d * output_scale)) for d = 0 .. 255: the softmax's exponentials of int8 logits."""
    return np.round(EXP_ONE * np.exp(-np.arange(256) * float(output_scale))).astype(np.int64)


def probabilities(scores: np.ndarray, output_scale: float, zero_point: int) -> np.ndarray:
    """Class probabilities (0 .. 255 steps of 1/256) of int8 outputs (results x classes), as the device computes
    them: the softmax of logits through `exp_table` in integers, or a softmax output's own steps.

    Raises:
        DataError: the scores are not int8 results x classes.
    """
    scores = np.asarray(scores)
    if scores.dtype != np.int8 or scores.ndim != 2:
        raise DataError(f"stream scores must be int8 (results, classes); got {scores.dtype} {scores.shape}")
    steps = scores.astype(np.int64)
    if not outputs_logits(output_scale, zero_point):
        return steps - zero_point
    exponentials = exp_table(output_scale)[steps.max(axis=1, keepdims=True) - steps]
    total = exponentials.sum(axis=1, keepdims=True)
    return np.minimum((exponentials * PROBABILITY_ONE + total // 2) // total, PROBABILITY_ONE - 1)


def smooth(probability: np.ndarray, times_ms: np.ndarray, cfg: StreamConfig) -> Smoothed:
    """Average `probabilities` (results x classes) over each result's window, as the device's ring buffer does.

    The window of the result at time t holds the results from t - average_window_ms to t, at most
    `cfg.capacity` of them (the newest). Sums are exact integers, so the top class is the device's.

    Raises:
        DataError: not one time per result, or the times do not increase.
    """
    times = np.asarray(times_ms, dtype=np.int64)
    if len(times) != len(probability):
        raise DataError(f"stream results need one time each; got {len(probability)} results, {len(times)} times")
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        raise DataError("stream result times must increase, as a device produces them")
    steps = np.asarray(probability, np.int64)
    running = np.concatenate([np.zeros((1, steps.shape[1]), np.int64), np.cumsum(steps, axis=0)])
    index = np.arange(len(times))
    first = np.maximum(np.searchsorted(times, times - cfg.average_window_ms, side="left"), index - cfg.capacity + 1)
    sums = running[index + 1] - running[first]
    top = np.argmax(sums, axis=1)  # the first of equal sums, as the C loop's strict >
    return Smoothed(times_ms=times, top=top, top_sum=sums[index, top], count=index + 1 - first)


def detect(smoothed: Smoothed, keywords: Sequence[bool], level: int, cfg: StreamConfig) -> list[Detection]:
    """The detections of `smoothed` results at threshold `level` (output steps), after suppression.

    Args:
        keywords: per class, whether it is a keyword (`_silence_` and `_unknown_` are not).
    """
    is_keyword = np.asarray(keywords, dtype=bool)[smoothed.top]
    firing = is_keyword & (smoothed.count >= cfg.min_count) & (smoothed.top_sum >= level * smoothed.count)
    detections: list[Detection] = []
    for i in np.flatnonzero(firing):
        time_ms = int(smoothed.times_ms[i])
        if detections and time_ms - detections[-1].time_ms < cfg.suppression_ms:
            continue
        detections.append(Detection(time_ms=time_ms, label=int(smoothed.top[i]),
                                    mean_level=float(smoothed.top_sum[i]) / int(smoothed.count[i])))
    return detections


def recognize(scores: np.ndarray, times_ms: np.ndarray, keywords: Sequence[bool], output_scale: float,
              zero_point: int, cfg: StreamConfig) -> list[Detection]:
    """The detections a device makes from int8 `scores` at `times_ms` at `cfg.threshold`: `probabilities`,
    `smooth`, then `detect`."""
    smoothed = smooth(probabilities(scores, output_scale, zero_point), times_ms, cfg)
    return detect(smoothed, keywords, threshold_level(cfg.threshold), cfg)


def keyword_classes(labels: Sequence[str]) -> tuple[bool, ...]:
    """Per label, whether it is a keyword: TensorFlow's `_silence_` and `_unknown_` (a leading `_`) are not."""
    return tuple(not label.startswith("_") for label in labels)


def listening(stride_ms: int, latency_range_ms: tuple[float, float], window_stride_ms: int) -> dict:
    """Whether one inference fits in `stride_ms`, from the board's estimated latency range (`tinykd report`).

    A model slower than its stride falls behind the stream: results arrive late, then windows are skipped. The
    front-end's windows of each stride are not in the estimate, so `fits_with_room` asks for a fifth of the stride
    to spare at the range's high end, and `shortest_stride_ms` is the shortest stride (a multiple of
    `window_stride_ms`) that gives it.
    """
    low_ms, high_ms = latency_range_ms
    shortest = math.ceil(high_ms / LISTENING_BUSY_LIMIT / window_stride_ms) * window_stride_ms
    return {"stride_ms": stride_ms, "latency_range_ms": [round(low_ms, 1), round(high_ms, 1)],
            "busy_fraction_at_high": round(high_ms / stride_ms, 3),
            "keeps_up": high_ms <= stride_ms, "fits_with_room": high_ms <= LISTENING_BUSY_LIMIT * stride_ms,
            "shortest_stride_ms": shortest}


def listening_line(listening: dict, board: str, setting: str = "stream.stride_ms") -> str:
    """One line on whether `board` keeps up with the stream, with the fix when it does not; `setting` names where
    the stride was given (the recipe's key, or `tinykd report --every`)."""
    low, high = listening["latency_range_ms"]
    said = (f"Listening: one inference every {listening['stride_ms']} ms ({setting}); {low:.0f}-{high:.0f} ms "
            f"estimated on {board}, {listening['busy_fraction_at_high']:.0%} of the stride at the high end")
    if listening["fits_with_room"]:
        return said + ", leaving the rest for the front-end."
    verdict = "keeps up only without the front-end's time" if listening["keeps_up"] else "**does not keep up**"
    return (said + f": it {verdict}. Set {setting} to at least {listening['shortest_stride_ms']} "
            "(a fifth of the stride spare), or choose a faster model.")


def stream_defines(cfg: StreamConfig, name: str, labels: Sequence[str], output_scale: float,
                   zero_point: int) -> str:
    """The stream block of `<name>_model_settings.h`: the recipe's settings, the threshold in probability steps,
    which classes are keywords and the softmax table; it follows the block that defines `<NAME>_CLASS_COUNT`."""
    table = [str(value) for value in exp_table(output_scale)]
    fields = {
        "name": name, "NAME": name.upper(),
        "stride_ms": str(cfg.stride_ms), "average_window_ms": str(cfg.average_window_ms),
        "threshold": repr(float(cfg.threshold)) + "f", "suppression_ms": str(cfg.suppression_ms),
        "min_count": str(cfg.min_count), "capacity": str(cfg.capacity),
        "threshold_level": str(threshold_level(cfg.threshold)),
        "outputs_logits": "true" if outputs_logits(output_scale, zero_point) else "false",
        "exp_one": str(EXP_ONE), "probability_one": str(PROBABILITY_ONE),
        "exp_table": "\n".join("    " + ", ".join(table[i:i + 16]) + "," for i in range(0, 256, 16)),
        "keywords": ", ".join("true" if keyword else "false" for keyword in keyword_classes(labels)),
    }
    return _render("stream_settings.h.in", fields)


def recognizer_header(name: str) -> str:
    """`<name>_recognizer.h`: the device's side of `recognize`, header-only and without TFLM."""
    return _render("recognizer.h.in", {"name": name, "NAME": name.upper()})


def _render(template_name: str, fields: dict[str, str]) -> str:
    template = (resources.files("tinykd") / "templates" / template_name).read_text(encoding="utf-8")
    return Template(template).substitute(fields)
