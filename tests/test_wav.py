"""WAV decoding of every bit depth, the resampler against analytic sines, and fitting clips to a length."""

import struct
import wave

import numpy as np
import pytest

from tinykd.data import wav

SIGNAL = np.array([0, 1, -1, 32767, -32768, 1234, -4321, 256], dtype=np.int64)


def write_pcm(path, samples: np.ndarray, width: int, rate: int = 16000) -> None:
    """`samples` in int16 units written at `width` bytes per sample with the stdlib."""
    if width == 1:
        raw = ((samples >> 8) + 128).astype(np.uint8).tobytes()
    elif width == 3:
        wide = (samples << 8).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = wide.tobytes()
    else:
        raw = (samples << (8 * (width - 2))).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(raw)


def write_float(path, samples: np.ndarray, channels: int = 1, extensible: bool = False) -> None:
    data = (samples / 32768.0).astype("<f4").tobytes()
    tag = 0xFFFE if extensible else 3
    fmt = struct.pack("<HHIIHH", tag, channels, 16000, 16000 * 4 * channels, 4 * channels, 32)
    if extensible:
        fmt += struct.pack("<HHI", 22, 32, 0) + struct.pack("<H", 3) + bytes(14)  # sub-format: IEEE float
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_pcm_of_every_width_reads_in_int16_units(tmp_path, width):
    write_pcm(tmp_path / "a.wav", SIGNAL, width)
    samples, rate = wav.read(tmp_path / "a.wav")
    assert rate == 16000 and samples.shape == (len(SIGNAL), 1)
    assert np.array_equal(samples[:, 0], SIGNAL)


def test_eight_bit_is_unsigned_and_keeps_its_top_byte(tmp_path):
    write_pcm(tmp_path / "a.wav", SIGNAL, 1)
    samples, _ = wav.read(tmp_path / "a.wav")
    assert np.array_equal(samples[:, 0], (SIGNAL >> 8) << 8)


@pytest.mark.parametrize("extensible", [False, True])
def test_float_wavs_read_too(tmp_path, extensible):
    write_float(tmp_path / "f.wav", np.repeat(SIGNAL, 2), channels=2, extensible=extensible)
    samples, rate = wav.read(tmp_path / "f.wav")
    assert rate == 16000 and samples.shape == (len(SIGNAL), 2)
    assert np.allclose(samples[:, 0], SIGNAL) and np.allclose(samples[:, 1], SIGNAL)


def test_write_rounds_and_clips_to_int16(tmp_path):
    wav.write(tmp_path / "o.wav", np.array([0.4, 0.6, -1.6, 40000.0, -40000.0]), 8000)
    samples, rate = wav.read(tmp_path / "o.wav")
    assert rate == 8000 and samples[:, 0].tolist() == [0, 1, -2, 32767, -32768]


def test_broken_files_raise_wav_error(tmp_path):
    (tmp_path / "text.wav").write_text("hello")
    write_pcm(tmp_path / "cut.wav", np.zeros(1000, dtype=np.int64), 2)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes()[:500])
    write_float(tmp_path / "nan.wav", np.array([0.0, np.nan]))
    for name, message in (("text.wav", "not a WAV"), ("cut.wav", "truncated"), ("nan.wav", "NaN")):
        with pytest.raises(wav.WavError, match=message):
            wav.read(tmp_path / name)


@pytest.mark.parametrize("from_hz, to_hz", [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000)])
def test_resampling_keeps_a_tone_and_its_length(from_hz, to_hz):
    tone = 10000 * np.sin(2 * np.pi * 1000 * np.arange(from_hz) / from_hz)
    out = wav.resample(tone, from_hz, to_hz)
    expected = 10000 * np.sin(2 * np.pi * 1000 * np.arange(to_hz) / to_hz)
    assert len(out) == to_hz and np.abs(out - expected)[100:-100].max() < 0.5


def test_downsampling_removes_what_the_new_rate_cannot_hold():
    alias = 10000 * np.sin(2 * np.pi * 10000 * np.arange(48000) / 48000)  # 10 kHz: above 16 kHz's Nyquist
    assert np.abs(wav.resample(alias, 48000, 16000))[100:-100].max() < 10000 * 10 ** (-60 / 20)


def test_fit_pads_at_the_end_or_keeps_the_loudest_window():
    padded, kind = wav.fit(np.ones(3), 5)
    assert kind == "padded" and padded.tolist() == [1, 1, 1, 0, 0]
    trimmed, kind = wav.fit(np.array([1, 1, 9, 9, 9, 1, 1]), 3)
    assert kind == "trimmed" and trimmed.tolist() == [9, 9, 9]
    same, kind = wav.fit(np.ones(4), 4)
    assert kind is None and len(same) == 4
