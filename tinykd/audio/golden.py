"""Golden vectors: a test clip, its exact int8 features and the int8 model output tinykd expects, as a C header
that lets firmware engineers check front-end and model parity on their board."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from string import Template

import numpy as np

from tinykd.audio.frontend import FrontendConfig, features, to_int8
from tinykd.errors import DataError, ExportError

# Room for any model a Cortex-M can hold; TFLM only has to allocate once, on the host.
_ARENA_BYTES = 16 * 1024 * 1024
_VALUES_PER_LINE = 16


@dataclass(frozen=True, kw_only=True, eq=False)
class GoldenVectors:
    """`samples` (int16, clip_samples), `features` (int8, frames x channels) and `expected_output` (int8, one
    score per class) of one clip."""

    samples: np.ndarray
    features: np.ndarray
    expected_output: np.ndarray


def golden_vectors(clip_int16: np.ndarray, cfg: FrontendConfig, tflite: bytes) -> GoldenVectors:
    """Compute the front-end's int8 features of one clip and run them through `tflite` in TFLite Micro.

    Raises:
        ExportError: the clip does not fit the front-end, the model's input is not int8 with frames x channels
            elements, or TFLM cannot run the model.
    """
    from tinykd import model_file, tflm
    from tinykd.errors import ModelError

    samples = np.asarray(clip_int16)
    try:
        feature_map = to_int8(features(samples[np.newaxis], cfg))[0]
    except DataError as error:
        raise ExportError(f"golden clip: {error}") from None
    try:
        given = model_file.read(tflite, "golden vectors' model").inputs[0]
    except ModelError as error:
        raise ExportError(f"golden vectors: {error}") from None
    if given.dtype != "int8" or math.prod(given.shape) != feature_map.size:
        raise ExportError(f"golden vectors: the model input is {given.dtype} {tuple(given.shape)}; the "
                          f"front-end gives int8 {cfg.feature_shape} ({feature_map.size} values). Build the model "
                          f"for input {(*cfg.feature_shape, 1)} and convert it with an int8 input")
    try:
        output = tflm.outputs(tflite, feature_map[np.newaxis], _ARENA_BYTES)[0][0]
    except ModelError as error:
        raise ExportError(f"golden vectors: {error}") from None
    return GoldenVectors(samples=samples.astype(np.int16), features=feature_map, expected_output=output)


def golden_header(golden: GoldenVectors, name: str) -> str:
    """`<name>_golden_vectors.h`: the three arrays and their lengths, checked at compile time against
    `<name>_model_settings.h` (which must carry the front-end block)."""
    frames, channels = golden.features.shape
    fields = {
        "name": name, "NAME": name.upper(),
        "sample_count": str(golden.samples.size), "frames": str(frames), "channels": str(channels),
        "feature_count": str(golden.features.size), "output_count": str(golden.expected_output.size),
        "samples": _c_values(golden.samples), "features": _c_values(golden.features),
        "expected_output": _c_values(golden.expected_output),
    }
    template = (resources.files("tinykd") / "templates" / "golden_vectors.h.in").read_text(encoding="utf-8")
    return Template(template).substitute(fields)


def _c_values(values: np.ndarray) -> str:
    flat = [str(int(value)) for value in values.reshape(-1)]
    return "\n".join("  " + ", ".join(flat[start:start + _VALUES_PER_LINE]) + ","
                     for start in range(0, len(flat), _VALUES_PER_LINE))
