"""tinykd.audio: the microfrontend op, the int8 formula, the settings header and the golden vectors, checked with
the real op, the real TFLM interpreter and real compilers, and recomputed from the exported headers alone."""

import dataclasses
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinykd import audio
from tinykd.audio import FrontendConfig
from tinykd.errors import ConfigError, DataError, ExportError
from tinykd.export import FirmwareSpec, export

# Every field differs from the defaults, so a round trip cannot pass by falling back to one.
NON_DEFAULT = FrontendConfig(sample_rate_hz=8000, clip_ms=500, window_size_ms=25, window_stride_ms=10,
                             num_channels=16, lower_band_limit_hz=100.0, upper_band_limit_hz=3800.5,
                             smoothing_bits=9, even_smoothing=0.03, odd_smoothing=0.07, min_signal_remaining=0.1,
                             enable_pcan=False, pcan_strength=0.9, pcan_offset=81.5, gain_bits=20, enable_log=False,
                             scale_shift=5)
LABELS = ("yes", "no", "silence")
NAME = "kws"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: it is a required tool for these tests")
    return path


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, **kwargs)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stderr}"
    return result


def _tone(frequency_hz: float, cfg: FrontendConfig, amplitude: int = 8000) -> np.ndarray:
    seconds = np.arange(cfg.clip_samples) / cfg.sample_rate_hz
    return np.round(amplitude * np.sin(2 * np.pi * frequency_hz * seconds)).astype(np.int16)


def _word_like_clip(seed: int) -> np.ndarray:
    """1 s at 16 kHz: quiet noise, then a 400 ms chirp with an envelope, like a spoken word."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(16000) / 16000
    start, length = 0.25 + 0.2 * rng.random(), 0.4
    inside = (seconds >= start) & (seconds < start + length)
    phase = 2 * np.pi * (300 * seconds + 2000 * (seconds - start) ** 2)
    envelope = np.where(inside, np.sin(np.pi * np.clip((seconds - start) / length, 0, 1)), 0.0)
    wave = 9000 * envelope * np.sin(phase) + 150 * rng.standard_normal(seconds.size)
    return np.clip(np.round(wave), -32768, 32767).astype(np.int16)


def _c_array(text: str, name: str) -> np.ndarray:
    body = re.search(rf"\b{name}\[\w+\] = \{{(.*?)\}};", text, re.S).group(1)
    return np.array([int(token) for token in re.findall(r"-?\d+", body)])


# --- features -------------------------------------------------------------------------------------------------

def test_one_second_gives_49_frames_of_40_channels():
    clips = np.stack([_word_like_clip(0), _word_like_clip(1)])

    values = audio.features(clips, FrontendConfig())

    assert FrontendConfig().feature_shape == (49, 40)
    assert values.shape == (2, 49, 40) and values.dtype == np.uint16
    assert values.max() > 0


def test_non_default_frames_follow_the_op_sample_arithmetic():
    # 500 ms at 8 kHz = 4000 samples, 25 ms windows = 200 samples, 10 ms stride = 80: (4000 - 200) // 80 + 1.
    values = audio.features(np.zeros((1, 4000), np.int16), NON_DEFAULT)

    assert values.shape == (1, 48, 16) == (1, *NON_DEFAULT.feature_shape)


def test_silence_gives_the_lowest_constant_features():
    values = audio.features(np.zeros((1, 16000), np.int16), FrontendConfig())

    assert np.all(values == 0)
    assert np.all(audio.to_int8(values) == -128)


@pytest.mark.parametrize("frequency_hz", [500, 1000, 3000])
def test_a_tone_excites_the_channel_covering_its_frequency(frequency_hz):
    cfg = FrontendConfig()
    mean = audio.features(_tone(frequency_hz, cfg)[np.newaxis], cfg)[0].mean(axis=0)
    # The library spaces num_channels + 1 band edges evenly on the mel scale 1127 ln(1 + f / 700)
    # (filterbank_util.c); `position` is the tone's place among them.
    mel = lambda hz: 1127.0 * math.log1p(hz / 700.0)  # noqa: E731
    spacing = (mel(cfg.upper_band_limit_hz) - mel(cfg.lower_band_limit_hz)) / (cfg.num_channels + 1)
    position = (mel(frequency_hz) - mel(cfg.lower_band_limit_hz)) / spacing

    assert abs(int(mean.argmax()) - position) < 1
    # PCAN lifts the faint rest of the spectrum (rounding noise) a lot, so the margin is modest at low pitches.
    assert mean.max() > 2 * np.median(mean)


def test_features_take_whole_floats_and_reject_other_audio_or_lengths():
    clip = _word_like_clip(3)[np.newaxis]

    assert np.array_equal(audio.features(clip.astype(np.float32), FrontendConfig()),
                          audio.features(clip, FrontendConfig()))
    with pytest.raises(DataError, match="int16 units"):
        audio.features(clip / 32768.0, FrontendConfig())
    with pytest.raises(DataError, match="int16 units"):
        audio.features(np.full((1, 16000), 40000, np.int32), FrontendConfig())
    with pytest.raises(DataError, match=r"\(clips, 16000\)"):
        audio.features(np.zeros((1, 15999), np.int16), FrontendConfig())


# --- int8 -----------------------------------------------------------------------------------------------------

def test_to_int8_matches_hand_computation_and_clamps():
    # (u * 256 + 333) // 666 - 128 by hand: 0 -> 0 - 128; 2 -> 845 // 666 = 1; 333 -> 85581 // 666 = 128;
    # 662 -> 169805 // 666 = 254; 663 -> 170061 // 666 = 255; 666 -> 256, clamped to 127; 65535 -> clamped.
    values = np.array([0, 1, 2, 333, 662, 663, 666, 65535], np.uint16)

    assert audio.to_int8(values).tolist() == [-128, -128, -127, 0, 126, 127, 127, 127]
    everything = audio.to_int8(np.arange(65536, dtype=np.uint16))
    assert everything.dtype == np.int8 and np.all(np.diff(everything.astype(int)) >= 0)
    with pytest.raises(DataError):
        audio.to_int8(np.array([-1]))


def test_model_input_quantizes_back_to_the_same_int8():
    every_int8 = np.arange(-128, 128, dtype=np.int8)
    x = audio.to_model_input(every_int8)
    # TFLite's input quantization, in float32 as the converted model does it.
    q = np.round(x / np.float32(audio.INPUT_SCALE)) + audio.INPUT_ZERO_POINT

    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 255 / 256
    assert np.array_equal(q.astype(np.int8), every_int8)


def test_c_to_int8_matches_python_on_every_uint16(tmp_path):
    (tmp_path / "settings.h").write_text("#include <stdint.h>\n" + audio.settings_defines(FrontendConfig(), NAME))
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include "settings.h"\n'
        "int main() { for (int v = 0; v < 65536; ++v) std::printf(\"%d\\n\", kws_frontend_to_int8(v)); }\n")
    _run([_tool("g++"), "-std=c++17", "-Wall", "-Wextra", "-Werror", tmp_path / "main.cc", "-o", tmp_path / "main"])

    printed = _run([tmp_path / "main"], text=True).stdout.split()

    assert [int(value) for value in printed] == audio.to_int8(np.arange(65536, dtype=np.uint16)).tolist()


# --- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [FrontendConfig(), NON_DEFAULT], ids=["defaults", "non_default"])
def test_settings_round_trip_through_the_header_text(cfg):
    text = audio.settings_defines(cfg, NAME)

    assert audio.parse_settings(text) == cfg
    assert f"constexpr int KWS_FRONTEND_FRAMES = {cfg.frames};" in text
    assert audio.parse_settings(audio.settings_defines(cfg, "my_frontend_2")) == cfg


def test_header_with_two_models_front_ends_is_refused():
    text = audio.settings_defines(FrontendConfig(), "a") + audio.settings_defines(FrontendConfig(), "b")

    with pytest.raises(ConfigError, match="found those of A, B"):
        audio.parse_settings(text)


@pytest.mark.parametrize("key, value", [("window_stride_ms", 0), ("window_stride_ms", 31),
                                        ("upper_band_limit_hz", 8000.0), ("kind", "mfcc"), ("num_channels", 0),
                                        ("sample_rate_hz", 44100), ("pcan_offset", 0.0)])
def test_invalid_settings_name_their_key(key, value):
    with pytest.raises(ValueError, match="must") as raised:
        FrontendConfig(**{key: value})

    assert raised.value.key == key


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(FrontendConfig)])
def test_header_missing_any_setting_fails_to_parse_naming_it(field):
    text = audio.settings_defines(FrontendConfig(), NAME)
    cut = re.sub(rf"^constexpr .*\bKWS_FRONTEND_{field.upper()} = .*\n", "", text, flags=re.M)

    assert cut != text
    with pytest.raises(ConfigError, match=rf"_FRONTEND_{field.upper()} \(frontend\.{field}\) is missing"):
        audio.parse_settings(cut)


@pytest.mark.parametrize("old, new, message", [
    ("WINDOW_STRIDE_MS = 20", "WINDOW_STRIDE_MS = 19", "KWS_FRONTEND_FRAMES is 49, expected 52"),
    ("WINDOW_STRIDE_MS = 20", "WINDOW_STRIDE_MS = 0", "frontend.window_stride_ms: must be"),
    ("INT8_DIVISOR = 666", "INT8_DIVISOR = 665", "KWS_FRONTEND_INT8_DIVISOR is 665, expected 666"),
    ("PCAN_STRENGTH = 0.95f", "PCAN_STRENGTH = 0.95", "KWS_FRONTEND_PCAN_STRENGTH = '0.95' is not a C float"),
])
def test_header_whose_settings_disagree_or_are_invalid_fails_to_parse(old, new, message):
    text = audio.settings_defines(FrontendConfig(), NAME)

    assert old in text
    with pytest.raises(ConfigError, match=re.escape(message)):
        audio.parse_settings(text.replace(old, new))


# --- golden vectors and export ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_kws_tflite() -> bytes:
    """A seeded, untrained full-int8 CNN on (49, 40, 1) features, calibrated on real front-end features."""
    from tinykd.convert import convert
    from tinykd.keras_shim import keras

    cfg = FrontendConfig()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((*cfg.feature_shape, 1)),
        keras.layers.Conv2D(4, (5, 5), strides=(2, 2), activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(len(LABELS), activation="softmax"),
    ])
    clips = np.stack([_word_like_clip(seed) for seed in range(8)])
    representative = audio.to_model_input(audio.to_int8(audio.features(clips, cfg)))[..., np.newaxis]
    # The two ends of the int8 range, so calibration sees the whole input range 0 .. 255/256.
    ends = audio.to_model_input(np.full((2, *cfg.feature_shape, 1), [[[[-128]]], [[[127]]]], np.int8))
    return convert(model, np.concatenate([representative, ends]))


@pytest.fixture(scope="module")
def golden_export(tiny_kws_tflite, tmp_path_factory) -> Path:
    spec = FirmwareSpec(name=NAME, labels=LABELS, arena_bytes=20_000)
    out_dir = tmp_path_factory.mktemp("golden") / "firmware"
    export(tiny_kws_tflite, spec, out_dir, frontend=FrontendConfig(), golden_clip=_word_like_clip(42))
    return out_dir


def test_calibrated_model_gets_the_documented_input_quantization(tiny_kws_tflite):
    from tinykd import model_file

    tensor = model_file.read(tiny_kws_tflite, source="tiny").inputs[0]

    assert (tensor.scale, tensor.zero_point) == (audio.INPUT_SCALE, audio.INPUT_ZERO_POINT)


def test_golden_vectors_recomputed_from_the_exported_headers_alone_match_exactly(golden_export):
    from tflite_micro.python.tflite_micro import runtime

    settings = (golden_export / f"{NAME}_model_settings.h").read_text()
    golden = (golden_export / f"{NAME}_golden_vectors.h").read_text()
    model_data = (golden_export / f"{NAME}_model_data.cc").read_text()
    cfg = audio.parse_settings(settings)
    samples = _c_array(golden, f"{NAME}_golden_samples").astype(np.int16)
    expected_features = _c_array(golden, f"{NAME}_golden_features")
    expected_output = _c_array(golden, f"{NAME}_golden_expected_output")
    body = re.search(rf"{NAME}_model_data\[\] = \{{(.*?)\}};", model_data, re.S).group(1)
    tflite = bytes(int(token, 16) for token in re.findall(r"0x[0-9a-f]{2}", body))

    features = audio.to_int8(audio.features(samples[np.newaxis], cfg))[0]
    micro = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
    micro.set_input(features.reshape(micro.get_input_details(0)["shape"]), 0)
    micro.invoke()
    output = micro.get_output(0).reshape(-1)

    assert samples.size == 16000 and np.abs(samples).max() > 1000
    assert np.array_equal(features.reshape(-1), expected_features)
    assert np.unique(expected_features).size > 20, "a clip with so few feature values checks little"
    assert np.array_equal(output, expected_output) and expected_output.size == len(LABELS)


def test_header_with_one_setting_changed_no_longer_reproduces_the_golden_features(golden_export):
    settings = (golden_export / f"{NAME}_model_settings.h").read_text()
    golden = (golden_export / f"{NAME}_golden_vectors.h").read_text()
    samples = _c_array(golden, f"{NAME}_golden_samples").astype(np.int16)
    expected = _c_array(golden, f"{NAME}_golden_features")
    edited = settings.replace("KWS_FRONTEND_PCAN_STRENGTH = 0.95f", "KWS_FRONTEND_PCAN_STRENGTH = 0.9f")

    features = audio.to_int8(audio.features(samples[np.newaxis], audio.parse_settings(edited)))[0]

    assert edited != settings
    assert not np.array_equal(features.reshape(-1), expected)


def test_exported_headers_compile_for_cortex_m4(golden_export, tmp_path):
    user = tmp_path / "parity.cc"
    # What a board's parity test does with the front-end's uint16 output; compiled here, run on the board.
    user.write_text('#include "kws_model_settings.h"\n#include "kws_golden_vectors.h"\n'
                    "int count_feature_mismatches(const uint16_t* frontend_values) {\n"
                    "  int mismatches = 0;\n"
                    "  for (int i = 0; i < KWS_GOLDEN_FEATURE_COUNT; ++i) {\n"
                    "    mismatches += kws_golden_features[i] != kws_frontend_to_int8(frontend_values[i]);\n"
                    "  }\n"
                    "  return mismatches;\n"
                    "}\n"
                    "int16_t first_sample() { return kws_golden_samples[0]; }\n"
                    "int8_t first_score() { return kws_golden_expected_output[0]; }\n")

    _run([_tool("arm-none-eabi-g++"), "-mcpu=cortex-m4", "-mthumb", "-std=c++17", "-Wall", "-Wextra", "-Werror",
          "-fsyntax-only", "-I", golden_export, user])


def test_export_lists_the_golden_header_and_keeps_the_six_files(golden_export):
    names = sorted(path.name for path in golden_export.iterdir())

    assert names == sorted(f"{NAME}_{stem}" for stem in ("model_data.h", "model_data.cc", "model_settings.h",
                                                        "op_resolver.h", "example.h", "example.cc",
                                                        "golden_vectors.h", "recognizer.h", "listen.h"))


def test_audio_golden_header_also_carries_the_clip_features_as_the_first_model_golden_vector(golden_export):
    golden = (golden_export / f"{NAME}_golden_vectors.h").read_text()
    block = re.search(rf"\b{NAME}_golden_inputs\[\w+\]\[\w+\] = \{{(.*?)\n\}};", golden, re.S).group(1)
    outputs = re.search(rf"\b{NAME}_golden_outputs\[\w+\]\[\w+\] = \{{(.*?)\n\}};", golden, re.S).group(1)

    assert f"constexpr int {NAME.upper()}_GOLDEN_VECTOR_COUNT = 1;" in golden
    np.testing.assert_array_equal(np.array([int(t) for t in re.findall(r"-?\d+", block)]),
                                  _c_array(golden, f"{NAME}_golden_features"))
    np.testing.assert_array_equal(np.array([int(t) for t in re.findall(r"-?\d+", outputs)]),
                                  _c_array(golden, f"{NAME}_golden_expected_output"))


def test_export_refuses_a_frontend_the_model_input_cannot_hold(tiny_kws_tflite, tmp_path):
    spec = FirmwareSpec(name=NAME, labels=LABELS, arena_bytes=20_000)

    with pytest.raises(ExportError, match="does not hold the front-end's 49 frames x 20 channels"):
        export(tiny_kws_tflite, spec, tmp_path / "fw", frontend=FrontendConfig(num_channels=20))
    with pytest.raises(ExportError, match="pass frontend= too"):
        export(tiny_kws_tflite, spec, tmp_path / "fw", golden_clip=_word_like_clip(0))
    assert list(tmp_path.iterdir()) == []
