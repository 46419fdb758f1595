"""WAV files in and out, resampling and fitting a clip to a length: what the keyword reader and synthesizer share.

Samples are float64 numpy arrays in int16 units (-32768..32767) whatever the file's bit depth, so 8-, 16-, 24- and
32-bit PCM and 32/64-bit float files all come out on the scale a 16-bit microphone would give.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np

# Windowed-sinc resampler: the low-pass sits at 95% of the lower Nyquist frequency, each output sample sums 16 zero
# crossings of the sinc either side, and a Kaiser window (beta 8.6) keeps the stop band below about -80 dB.
ROLLOFF = 0.95
ZERO_CROSSINGS = 16
KAISER_BETA = 8.6
_CHUNK_SAMPLES = 16384  # output samples per gather; bounds memory for minute-long background files

_FORMAT_PCM, _FORMAT_FLOAT, _FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


class WavError(ValueError):
    """A file that is not a readable WAV; the reader turns it into a DataError naming the file and the fix."""


def read(path: Path) -> tuple[np.ndarray, int]:
    """Samples of shape (frames, channels) in int16 units, and the sample rate in Hz.

    Raises:
        WavError: not a WAV, an unsupported encoding, or data shorter than the header promises.
    """
    try:
        with wave.open(str(path), "rb") as file:
            channels, width, rate, frames = (file.getnchannels(), file.getsampwidth(), file.getframerate(),
                                             file.getnframes())
            raw = file.readframes(frames)
    except wave.Error as error:
        if str(error).startswith("unknown format"):  # the stdlib reads integer PCM only; floats are rarer
            return _read_float(path)
        raise WavError(str(error)) from None
    except EOFError:
        raise WavError("the file ends inside the header: truncated, or not a WAV") from None
    except struct.error as error:
        raise WavError(f"malformed header ({error})") from None
    if rate <= 0:
        raise WavError(f"the header gives a sample rate of {rate} Hz")
    if len(raw) != frames * channels * width:
        raise WavError(f"truncated: the header promises {frames} frames, the file holds "
                       f"{len(raw) // max(1, channels * width)}")
    return _integers(raw, width).reshape(-1, channels), rate


def write(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    """One mono 16-bit PCM file; `samples` are rounded and clipped to int16."""
    pcm = np.clip(np.rint(samples), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate_hz)
        file.writeframes(pcm.tobytes())


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by a windowed sinc evaluated per polyphase branch.

    Output sample k sits at input time k * from_hz / to_hz; its value is the input convolved with a Kaiser-windowed
    sinc low-pass at ROLLOFF times the lower of the two Nyquist frequencies (so downsampling cannot alias).
    """
    if from_hz == to_hz:
        return samples.astype(np.float64)
    common = math.gcd(from_hz, to_hz)
    up, down = to_hz // common, from_hz // common
    cutoff = ROLLOFF * min(1.0, to_hz / from_hz)  # as a fraction of the input Nyquist frequency
    half_width = ZERO_CROSSINGS / cutoff
    reach = int(math.ceil(half_width))
    offsets = np.arange(-reach + 1, reach + 1)
    distance = (np.arange(up)[:, None] / up) - offsets[None, :]  # phase minus tap position, in input samples
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (distance / half_width) ** 2, 0.0, None))) / np.i0(KAISER_BETA)
    table = cutoff * np.sinc(cutoff * distance) * window
    table /= table.sum(axis=1, keepdims=True)  # every branch passes DC at exactly unit gain
    padded = np.concatenate([np.zeros(reach), samples.astype(np.float64), np.zeros(reach + 1)])
    count = int(round(len(samples) * to_hz / from_hz))
    out = np.empty(count)
    for start in range(0, count, _CHUNK_SAMPLES):
        position = np.arange(start, min(count, start + _CHUNK_SAMPLES)) * down
        base, phase = position // up, position % up
        out[start:start + len(position)] = np.einsum("ij,ij->i", table[phase],
                                                     padded[base[:, None] + offsets[None, :] + reach])
    return out


def fit(samples: np.ndarray, length: int) -> tuple[np.ndarray, str | None]:
    """Exactly `length` samples: zero-padded at the end ("padded"), or the loudest window kept ("trimmed").

    The loudest window (largest energy) rather than the centre, because a word spoken early or late in a long
    recording would lose its start or end to a centre cut.
    """
    if len(samples) == length:
        return samples, None
    if len(samples) < length:
        return np.concatenate([samples, np.zeros(length - len(samples))]), "padded"
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[length:] - energy[:-length]))
    return samples[start:start + length], "trimmed"


def _integers(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        return (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) * 256.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float64)
    if width == 3:
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        return np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float64) / 256.0
    if width == 4:
        return np.frombuffer(raw, "<i4").astype(np.float64) / 65536.0
    raise WavError(f"{8 * width}-bit samples are not supported (8, 16, 24 or 32-bit PCM)")


def _read_float(path: Path) -> tuple[np.ndarray, int]:
    """IEEE-float WAVs (format 3, or WAVE_FORMAT_EXTENSIBLE), which Python 3.11's `wave` refuses."""
    raw = path.read_bytes()
    chunks, at = {}, 12
    while at + 8 <= len(raw):
        name, size = raw[at:at + 4], struct.unpack("<I", raw[at + 4:at + 8])[0]
        chunks.setdefault(name, raw[at + 8:at + 8 + size])
        at += 8 + size + (size & 1)
    fmt, data = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or data is None or len(fmt) < 16:
        raise WavError("no fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the plain format tag
    if rate <= 0 or channels == 0 or bits % 8 or not bits:
        raise WavError(f"the header gives {channels} channels of {bits}-bit samples at {rate} Hz")
    if tag == _FORMAT_PCM:
        samples = _integers(data[: len(data) - len(data) % (channels * bits // 8)], bits // 8)
    elif tag == _FORMAT_FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        samples = np.frombuffer(data[: len(data) - len(data) % (channels * bits // 8)], dtype) * 32768.0
        if not np.all(np.isfinite(samples)):
            raise WavError("NaN or infinite samples")
    else:
        raise WavError(f"unsupported encoding (format tag {tag}, {bits}-bit); convert to 16-bit PCM")
    return samples.astype(np.float64).reshape(-1, channels), rate
