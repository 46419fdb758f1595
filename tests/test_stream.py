"""Keyword spotting on a stream: the recognizer on known score sequences, the generated C recognizer against the
Python one (a real compiler, the exported headers), the synthesized stream's ground truth, and the scoring."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinykd import audio, config
from tinykd.audio import stream_eval
from tinykd.audio.frontend import FrontendConfig
from tinykd.audio.stream import (Detection, StreamConfig, keyword_classes, listening, probabilities, recognize,
                                 threshold_level)
from tinykd.data import keyword_stream, keywords
from tinykd.data.keyword_stream import Event, Stream
from tinykd.errors import ConfigError
from tinykd.export import FirmwareSpec, export

LABELS = ("_silence_", "_unknown_", "yes", "no")
SILENCE, YES, NO = 0, 2, 3
ZERO_POINT = -128  # a softmax output's: step k above it is probability k / 256
# Capacity 4 (300 ms at 100 ms strides), level 128 (probability 0.5).
SMALL = StreamConfig(stride_ms=100, average_window_ms=300, threshold=0.5, suppression_ms=1000, min_count=2)


def one_hot(classes: list[int]) -> np.ndarray:
    """int8 results that put all probability on one class each."""
    scores = np.full((len(classes), len(LABELS)), -128, np.int8)
    scores[np.arange(len(classes)), classes] = 127
    return scores


def run(classes: list[int], cfg: StreamConfig = SMALL) -> list[tuple[int, int]]:
    times = np.arange(len(classes)) * cfg.stride_ms
    found = recognize(one_hot(classes), times, keyword_classes(LABELS), 1 / 256, ZERO_POINT, cfg)
    return [(d.time_ms, d.label) for d in found]


# --- the recognizer on known sequences -----------------------------------------------------------------------------

def test_threshold_becomes_the_least_output_level_reaching_it():
    assert threshold_level(0.5) == 128
    assert threshold_level(0.7) == 180  # 179.2 steps: 179 would fall short
    assert threshold_level(0.75) == 192  # exact, not pushed up by float error


def test_logits_become_the_softmax_in_steps_of_1_256():
    rng = np.random.default_rng(0)
    scale, zero_point = 0.05, 2
    logits = rng.integers(-128, 128, (500, len(LABELS))).astype(np.int8)
    exact = np.exp((logits.astype(float) - zero_point) * scale)
    exact /= exact.sum(axis=1, keepdims=True)

    steps = probabilities(logits, scale, zero_point)

    # The table rounds each exponential to 1/65535 of the largest, so a step may differ by one at most.
    assert np.max(np.abs(steps - np.minimum(exact * 256, 255))) <= 1.0
    assert steps.min() >= 0 and steps.max() <= 255
    softmax_output = one_hot([YES, NO])
    assert probabilities(softmax_output, 1 / 256, -128)[:, [YES, NO]].tolist() == [[255, 0], [0, 255]]


def test_averaging_needs_most_of_the_window_and_min_count():
    # The first result alone is below min_count; the second already averages to a full "yes".
    assert run([YES, YES, SILENCE]) == [(100, YES)]
    # A one-result spike averages to 1/4 of the window; two of four tie with silence, which comes first.
    assert run([SILENCE] * 4 + [YES] + [SILENCE] * 4) == []
    assert run([SILENCE] * 4 + [YES, YES] + [SILENCE] * 4) == []
    assert run([SILENCE] * 4 + [YES, YES, YES] + [SILENCE] * 4) == [(600, YES)]


def test_suppression_holds_for_every_keyword_then_releases():
    burst = [YES, YES, YES, SILENCE, SILENCE, SILENCE, SILENCE]
    # "no" 700 ms after the "yes" detection is suppressed; the "yes" 1400 ms after it is not.
    classes = [SILENCE] * 4 + burst + [NO, NO, NO, SILENCE, SILENCE, SILENCE, SILENCE] + burst
    assert run(classes) == [(600, YES), (2000, YES)]
    assert run(classes, StreamConfig(**{**SMALL.__dict__, "suppression_ms": 0})) == [
        (600, YES), (700, YES), (1300, NO), (1400, NO), (2000, YES), (2100, YES)]


def test_silence_and_unknown_are_never_detected():
    assert run([SILENCE] * 8 + [1] * 8) == []


def test_threshold_compares_the_mean_probability():
    scores = np.full((6, len(LABELS)), -128, np.int8)
    scores[:, YES] = -128 + 128  # exactly 0.5 every time
    scores[:, SILENCE] = -128 + 100
    times = np.arange(6) * 100
    keywords = keyword_classes(LABELS)

    higher = StreamConfig(**{**SMALL.__dict__, "threshold": 129 / 256})
    assert [d.time_ms for d in recognize(scores, times, keywords, 1 / 256, ZERO_POINT, SMALL)] == [100]
    assert recognize(scores, times, keywords, 1 / 256, ZERO_POINT, higher) == []


def test_listening_weighs_the_boards_latency_range_against_the_stride():
    """The keyword default's student is estimated at 102.1-125.5 ms on nrf5340dk: every 100 ms it falls behind."""
    from tinykd.audio.stream import listening_line

    behind = listening(100, (102.1, 125.5), window_stride_ms=20)
    assert not behind["keeps_up"] and not behind["fits_with_room"]
    assert behind["shortest_stride_ms"] == 160  # 125.5 / 0.8 = 156.9, up to a whole 20-ms window
    assert "does not keep up" in listening_line(behind, "nrf5340dk") and "at least 160" in listening_line(behind, "x")
    tight = listening(140, (102.1, 125.5), window_stride_ms=20)
    assert tight["keeps_up"] and not tight["fits_with_room"]
    assert "only without the front-end" in listening_line(tight, "nrf5340dk")
    roomy = listening(160, (102.1, 125.5), window_stride_ms=20)
    assert roomy["fits_with_room"] and roomy["busy_fraction_at_high"] == 0.784
    assert "Set stream.stride_ms" not in listening_line(roomy, "nrf5340dk")


def test_recipe_stream_section_is_validated_with_its_key(tmp_path, repo):
    recipe = repo / "pipelines" / "kws_dscnn.yaml"

    # The recipe's board needs 102-126 ms per inference, so it listens less often than the default 100 ms.
    assert config.load(recipe).stream == StreamConfig(stride_ms=160, average_window_ms=750)
    with pytest.raises(ConfigError, match=r"stream\.threshold: must be in \(0, 1\]"):
        config.load(recipe, {"stream.threshold": "1.5"})
    with pytest.raises(ConfigError, match=r"stream\.stride_ms: must be a multiple of frontend\.window_stride_ms"):
        config.load(recipe, {"stream.stride_ms": "110"})
    with pytest.raises(ConfigError, match=r"stream\.min_count: must be from 1 to 5"):  # 750 // 160 + 1
        config.load(recipe, {"stream.min_count": "6"})


# --- the C recognizer against the Python one ---------------------------------------------------------------------

DRIVER = r"""
#include <stdio.h>
#include "kws_recognizer.h"
int main() {
  static kws_recognizer recognizer;
  long time_ms;
  int8_t scores[KWS_CLASS_COUNT];
  while (scanf("%ld", &time_ms) == 1) {
    for (int i = 0; i < KWS_CLASS_COUNT; ++i) { int value; scanf("%d", &value); scores[i] = (int8_t)value; }
    const int keyword = kws_recognizer_process(&recognizer, scores, (int32_t)time_ms);
    if (keyword >= 0) printf("%ld %d\n", time_ms, keyword);
  }
  return 0;
}
"""


def _tiny_model(activation: str | None) -> bytes:
    """A seeded, untrained full-int8 classifier of the front-end's features into the four LABELS."""
    from tinykd.convert import convert
    from tinykd.keras_shim import keras

    frontend = FrontendConfig()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((*frontend.feature_shape, 1)),
                              keras.layers.Conv2D(2, (5, 5), strides=(4, 4), activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(len(LABELS), activation=activation)])
    ends = np.full((2, *frontend.feature_shape, 1), [[[[-128]]], [[[127]]]], np.int8)
    features = np.random.default_rng(0).integers(-128, 128, (16, *frontend.feature_shape, 1)).astype(np.int8)
    return convert(model, audio.to_model_input(np.concatenate([features, ends])))


@pytest.fixture(scope="module")
def tiny_tflite() -> bytes:
    """Ends in a softmax, whose int8 output is already probabilities."""
    return _tiny_model("softmax")


@pytest.fixture(scope="module")
def tiny_logits_tflite() -> bytes:
    """Outputs int8 logits, as tinykd's models do."""
    return _tiny_model(None)


@pytest.mark.parametrize("outputs", ["logits", "softmax"])
def test_c_recognizer_and_python_make_identical_detections(outputs, tiny_tflite, tiny_logits_tflite, tmp_path):
    from tinykd import model_file

    tflite = tiny_logits_tflite if outputs == "logits" else tiny_tflite
    output = model_file.read(tflite).outputs[0]
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.fail("g++ not found on PATH: the host compiler is required for this test")
    cfg = StreamConfig(stride_ms=40, average_window_ms=200, threshold=0.55, suppression_ms=700, min_count=3)
    out_dir = tmp_path / "firmware"
    export(tflite, FirmwareSpec(name="kws", labels=LABELS, arena_bytes=20_000), out_dir,
           frontend=FrontendConfig(), stream=cfg)
    settings = (out_dir / "kws_model_settings.h").read_text()
    assert "constexpr int32_t KWS_STREAM_THRESHOLD_LEVEL = 141;" in settings  # ceil(0.55 * 256)
    assert f"KWS_STREAM_OUTPUTS_LOGITS = {str(outputs == 'logits').lower()};" in settings
    assert "constexpr bool KWS_STREAM_IS_KEYWORD[KWS_CLASS_COUNT] = {false, false, true, true};" in settings
    (tmp_path / "driver.cc").write_text(DRIVER)
    subprocess.run([compiler, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-I", str(out_dir),
                    str(tmp_path / "driver.cc"), "-o", str(tmp_path / "driver")], check=True)
    # Outputs that drift between classes, with bursts of "yes", at uneven times so windows hold 1 to 6 results.
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(0, 8, (4000, len(LABELS))), axis=0)
    walk[:, YES] += 150 * (np.sin(np.arange(4000) / 23) > 0.7)
    scores = np.clip(np.round(walk - walk.mean(axis=1, keepdims=True)), -128, 127).astype(np.int8)
    times = np.cumsum(rng.integers(1, 90, 4000))
    lines = "".join(f"{t} {' '.join(map(str, row))}\n" for t, row in zip(times, scores))

    done = subprocess.run([str(tmp_path / "driver")], input=lines, capture_output=True, text=True, check=True)
    python = recognize(scores, times, keyword_classes(LABELS), output.scale, output.zero_point, cfg)

    c_detections = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    assert len(c_detections) > 20
    assert c_detections == [(d.time_ms, d.label) for d in python]


def test_exported_listening_loop_is_written_for_audio_models_only(tiny_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=LABELS, arena_bytes=20_000)

    audio_files = {p.name for p in export(tiny_tflite, spec, tmp_path / "audio", frontend=FrontendConfig())}
    plain_files = {p.name for p in export(tiny_tflite, spec, tmp_path / "plain")}

    assert audio_files - plain_files == {"kws_recognizer.h", "kws_listen.h"}
    settings = (tmp_path / "audio" / "kws_model_settings.h").read_text()
    assert re.search(r"KWS_STREAM_STRIDE_MS = 100;", settings) and "STREAM" not in (
        tmp_path / "plain" / "kws_model_settings.h").read_text()
    # The loop compiles for a Cortex-M against the exported headers alone (it calls the example, not TFLM).
    user = tmp_path / "user.cc"
    user.write_text('#include "kws_listen.h"\nint heard(const int8_t* features, int32_t now_ms) '
                    '{ return kws_example_listen(features, now_ms); }\n')
    compiler = shutil.which("arm-none-eabi-g++")
    if compiler is None:
        pytest.fail("arm-none-eabi-g++ not found on PATH: the Cortex-M compiler is required for this test")
    subprocess.run([compiler, "-mcpu=cortex-m33", "-mthumb", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c",
                    "-I", str(tmp_path / "audio"), str(user), "-o", str(tmp_path / "user.o")], check=True)


# --- the stream --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_stream() -> Stream:
    return keyword_stream.make_stream(1.0, split="test", seed=0, speakers=10, jobs=2)


def test_stream_speakers_are_the_data_sets_held_out_test_speakers(short_stream, tiny_keywords):
    test_speakers = {line.split("/")[1].split("_nohash_")[0]
                     for line in (tiny_keywords / "testing_list.txt").read_text().splitlines()}

    assert set(short_stream.speakers) == test_speakers
    assert {e.speaker for e in short_stream.events if e.kind != "noise"} <= test_speakers


def test_stream_events_are_where_the_sound_is(short_stream):
    samples = short_stream.samples.astype(np.float64)
    events = short_stream.events

    def rms(start_ms: int, end_ms: int) -> float:
        return float(np.sqrt(np.mean(samples[start_ms * 16:end_ms * 16] ** 2)))

    assert {e.kind for e in events} == {"keyword", "unknown", "noise"}
    assert all(a.end_ms < b.start_ms for a, b in zip(events, events[1:]))
    assert events[-1].end_ms <= short_stream.duration_ms == 60_000
    for event in events:
        # The quieter background around it: the background may change kind and level just before or after.
        around = min(rms(event.start_ms - 1000, event.start_ms - 20), rms(event.end_ms + 20, event.end_ms + 1000))
        # Every event stands well above it (words at 5 dB SNR or more, bursts at 6 dB or more).
        assert rms(event.start_ms, event.end_ms) > 1.5 * around, event
    assert all(e.word in keyword_stream.KEYWORDS for e in events if e.kind == "keyword")
    assert all(e.word in keyword_stream.OTHER_WORDS for e in events if e.kind == "unknown")
    assert sum(e.kind == "keyword" for e in events) >= 5


def test_stream_is_the_same_for_a_seed_and_round_trips(short_stream, tmp_path):
    again = keyword_stream.make_stream(1.0, split="test", seed=0, speakers=10, jobs=1)
    other = keyword_stream.make_stream(0.2, split="val", seed=0, speakers=10, jobs=1)
    audio_path, _ = keyword_stream.write_stream(short_stream, tmp_path / "stream.wav")
    read = keyword_stream.read_stream(audio_path)

    assert np.array_equal(again.samples, short_stream.samples) and again.events == short_stream.events
    assert not set(other.speakers) & set(short_stream.speakers)
    assert np.array_equal(read.samples, short_stream.samples) and read.events == short_stream.events


# --- scoring ------------------------------------------------------------------------------------------------------

def test_window_features_are_the_clip_features_at_each_stride(short_stream):
    frontend = FrontendConfig()
    windows, ends = stream_eval.window_features(short_stream.samples[:48_000], frontend, stride_ms=500)

    assert list(ends) == [1000, 1500, 2000, 2500, 3000]
    clip = short_stream.samples[16_000:32_000]  # the window ending at 2000 ms
    assert np.array_equal(windows[2], audio.to_int8(audio.features(clip[np.newaxis], frontend))[0])


def test_score_counts_misses_wrong_labels_and_repeats():
    events = (Event(kind="keyword", word="yes", start_ms=1000, end_ms=1400, speaker="0a0a0a0a"),
              Event(kind="unknown", word="yet", start_ms=4000, end_ms=4300, speaker="0a0a0a0a"),
              Event(kind="keyword", word="no", start_ms=8000, end_ms=8300, speaker="1b1b1b1b"))
    stream = Stream(samples=np.zeros(16 * 36_000, np.int16), rate_hz=16000, events=events, split="test", seed=0,
                    speakers=())
    labels = ("_silence_", "_unknown_", "yes", "no")
    detections = [Detection(1900, 2, 200.0), Detection(2300, 2, 200.0),  # the "yes", then a repeat
                  Detection(4500, 3, 200.0),  # on another word
                  Detection(8200, 2, 200.0)]  # the wrong keyword: "no" is missed

    outcome = stream_eval.score(detections, stream, labels, tolerance_ms=1500, threshold=0.5)

    assert (outcome.keywords, outcome.false_rejects, outcome.false_accepts) == (2, 1, 3)
    assert outcome.false_reject_rate == 0.5 and outcome.false_accepts_per_hour == pytest.approx(300.0)
    assert dict(outcome.false_accepts_by_kind) == {"keyword": 2, "unknown": 1, "noise": 0, "background": 0}
    assert dict(outcome.false_accepts_by_word) == {"yes -> yes": 1, "yet -> no": 1, "no -> yes": 1}
    assert outcome.false_rejects_by_word == (("no", 1),)
    assert outcome.false_rejects_by_speaker == (("1b1b1b1b", 1, 1), ("0a0a0a0a", 0, 1))  # the unknown word not counted
    late = stream_eval.score([Detection(2901, 2, 200.0)], stream, labels, tolerance_ms=1500, threshold=0.5)
    assert (late.false_rejects, late.false_accepts) == (2, 1)
    assert dict(late.false_accepts_by_kind)["background"] == 1
    assert late.false_accepts_by_word == (("_background_ -> yes", 1),)


def test_listen_runs_the_int8_model_in_tflm_on_every_window(tiny_tflite, short_stream):
    frontend = FrontendConfig()
    cfg = StreamConfig(stride_ms=500, average_window_ms=1000, threshold=0.5, suppression_ms=1000, min_count=1)
    samples = short_stream.samples[:16_000 * 4]
    part = Stream(samples=samples, rate_hz=16000, events=(), split="test", seed=0, speakers=())

    smoothed = stream_eval.listen(tiny_tflite, part, frontend, cfg)
    windows, _ = stream_eval.window_features(samples, frontend, cfg.stride_ms)
    scores = stream_eval.tflm_scores(tiny_tflite, windows)

    assert list(smoothed.times_ms) == [1000, 1500, 2000, 2500, 3000, 3500, 4000]
    assert list(smoothed.count) == [1, 2, 3, 3, 3, 3, 3]
    # The child's TFLM output for the window ending at 2500 ms is what TFLM gives for that clip in-process.
    golden = audio.golden_vectors(samples[24_000:40_000], frontend, tiny_tflite)
    assert np.array_equal(scores[3], golden.expected_output)
    assert np.array_equal(np.argmax(scores[4:7].astype(int).sum(0), axis=0), smoothed.top[-1])  # softmax output


def test_data_stream_command_writes_the_audio_and_its_events(tmp_path):
    from click.testing import CliRunner

    from tinykd.cli import cli

    out = tmp_path / "streams" / "val.wav"
    done = CliRunner().invoke(cli, ["data", "stream", str(out), "--minutes", "0.2", "--split", "val",
                                    "--speakers", "10", "--jobs", "1"])

    assert done.exit_code == 0, done.output
    made = keyword_stream.read_stream(out)
    assert made.split == "val" and made.duration_ms == 12_000 and made.events
    assert f"wrote {out}" in done.output and "val speakers" in done.output


def test_a_stream_of_matched_held_out_speakers_is_spoken_by_that_split(tmp_path):
    from click.testing import CliRunner

    from tinykd.cli import cli

    out = tmp_path / "val_matched.wav"
    done = CliRunner().invoke(cli, ["data", "stream", str(out), "--minutes", "0.2", "--split", "val",
                                    "--speakers", "20", "--held-out", "matched", "--jobs", "1"])

    assert done.exit_code == 0, done.output
    chosen = keywords.choose_speakers(20, 0)
    split_of = keywords.split_speakers(chosen, 0, "matched")
    assert set(keyword_stream.read_stream(out).speakers) == {s.id for s in chosen if split_of[s] == "val"}
    assert split_of != keywords.split_speakers(chosen, 0)  # not the random split's voices
