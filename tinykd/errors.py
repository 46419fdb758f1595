"""Typed errors: what happened, what was expected, how to fix it. Only the CLI turns them into exit codes."""


class TinykdError(Exception):
    """Base class for every error tinykd raises on purpose."""


class ConfigError(TinykdError):
    """A recipe or override is wrong: names the file and the dotted key."""


class DataError(TinykdError):
    """A dataset is missing, unreadable or inconsistent: names the file or key."""


class ModelError(TinykdError):
    """A model cannot be built, loaded or run: names the layer or file."""


class ConversionError(TinykdError):
    """A model cannot become a full-int8 .tflite: names the op."""


class VerificationError(TinykdError):
    """TFLite Micro and the TFLite reference kernels disagree, or TFLM cannot run the model."""


class ExportError(TinykdError):
    """Firmware files cannot be written: names the op, label or path."""


class ReproducibilityError(TinykdError):
    """A rebuild gave bytes other than its manifest's, or there is no manifest to check: names the files."""


class FirmwareError(TinykdError):
    """The firmware harness cannot run: a missing TFLM tree, cross-compiler or QEMU (says how to get it), or a
    build that failed (names the file and the compiler's words)."""


class SearchError(TinykdError):
    """`tinykd search` cannot go on: no candidate meets the budget (names the smallest one's figures)."""
