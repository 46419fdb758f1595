"""The keyword-spotting audio front-end, with device parity: the features tinykd trains on come from the C code
the firmware runs, and the export carries the settings and golden vectors that prove it on the board.

TensorFlow is imported only when features are computed, so configs and headers stay cheap to handle.
"""

from tinykd.audio.frontend import (INPUT_SCALE, INPUT_ZERO_POINT, INT8_DIVISOR, INT8_MULTIPLIER, INT8_OFFSET,
                                   KINDS, FrontendConfig, features, to_int8, to_model_input)
from tinykd.audio.golden import GoldenVectors, golden_header, golden_vectors
from tinykd.audio.settings import parse_settings, settings_defines

__all__ = [
    "INPUT_SCALE", "INPUT_ZERO_POINT", "INT8_DIVISOR", "INT8_MULTIPLIER", "INT8_OFFSET", "KINDS",
    "FrontendConfig", "GoldenVectors", "features", "golden_header", "golden_vectors", "parse_settings",
    "settings_defines", "to_int8", "to_model_input",
]
