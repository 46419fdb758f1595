"""Write the TFLite Micro C++ sources for a converted model: model data, model settings and op resolver.

Every file is rendered from a `string.Template` in tinykd/templates/, and the settings come from the same
.tflite bytes that become the C array, so the C side cannot disagree with the model.
"""

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from tinykd import model_file
from tinykd.errors import ExportError, ModelError

# Arena margin: the arena from `tinykd report` plus 25%, rounded up to 16 bytes (why: model_settings.h.in).
ARENA_MARGIN_PERCENT = 25
ARENA_ALIGNMENT_BYTES = 16

_BYTES_PER_LINE = 12
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*", re.ASCII)
_C_TYPES = {"int8": "int8_t"}

# Schema builtin name -> MicroMutableOpResolver method, checked against
# tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro, 2025).
OP_RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "ELU": "AddElu", "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul",
    "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}


@dataclass(frozen=True, kw_only=True)
class FirmwareSpec:
    """What the C side needs beyond the model itself.

    `name` prefixes every file and C identifier; `arena_bytes` is the 32-bit arena from `tinykd report`
    (measured in the TFLM interpreter, corrected to 32 bits, plus kernel scratch); the model input as a float is
    `raw * raw_scale + raw_offset`.
    """

    name: str
    labels: tuple[str, ...]
    arena_bytes: int
    raw_scale: float = 1.0
    raw_offset: float = 0.0
    raw_description: str = ""


def export(tflite: bytes, spec: FirmwareSpec, out_dir: Path) -> tuple[Path, ...]:
    """Write `<name>_model_data.h/.cc`, `<name>_model_settings.h` and `<name>_op_resolver.h` into out_dir.

    Everything is rendered before anything is written, and files are moved into out_dir only once all of
    them are on disk, so a failure leaves out_dir as it was.

    Returns:
        The written paths, in the order above.

    Raises:
        ExportError: bad name, labels or arena; a model that is not full-int8 or uses an op TFLM cannot
            register; or out_dir cannot be written.
    """
    _check_spec(spec)
    try:
        model = model_file.read(tflite, source=f"{spec.name} model")
    except ModelError as error:
        raise ExportError(f"cannot export {spec.name}: {error}") from error
    rendered = {
        f"{spec.name}_model_data.h": _render("model_data.h.in", _names(spec)),
        f"{spec.name}_model_data.cc": _render("model_data.cc.in", _model_data_fields(tflite, spec)),
        f"{spec.name}_model_settings.h": _render("model_settings.h.in", _settings_fields(model, spec)),
        f"{spec.name}_op_resolver.h": _render("op_resolver.h.in", _resolver_fields(model, spec)),
    }
    return _write_atomically(rendered, Path(out_dir))


def arena_with_margin(arena_bytes: int) -> int:
    """The arena to reserve on the board: measured bytes plus ARENA_MARGIN_PERCENT, rounded up to 16 bytes."""
    padded = -(-arena_bytes * (100 + ARENA_MARGIN_PERCENT) // 100)
    return -(-padded // ARENA_ALIGNMENT_BYTES) * ARENA_ALIGNMENT_BYTES


def c_string(text: str) -> str:
    """A C/C++ string literal that reads back as the UTF-8 bytes of `text`.

    Bytes outside printable ASCII become three-digit octal escapes, which can never absorb the next
    character (hex escapes can); `?` is escaped so `??=` and friends are never trigraphs.
    """
    return '"' + "".join(_escape_byte(byte) for byte in text.encode("utf-8")) + '"'


def _escape_byte(byte: int) -> str:
    character = chr(byte)
    if character in '"\\?':
        return "\\" + character
    if 0x20 <= byte <= 0x7E:
        return character
    return f"\\{byte:03o}"


def _check_spec(spec: FirmwareSpec) -> None:
    if not _IDENTIFIER.fullmatch(spec.name):
        raise ExportError(f"firmware name {spec.name!r} is not a valid C identifier prefix; use ASCII letters, "
                          "digits and underscores, starting with a letter (e.g. 'fashion_mnist')")
    if isinstance(spec.arena_bytes, bool) or not isinstance(spec.arena_bytes, int) or spec.arena_bytes <= 0:
        raise ExportError(f"{spec.name}: arena_bytes must be a positive int measured in the TFLM interpreter, "
                          f"got {spec.arena_bytes!r}")
    for key in ("raw_scale", "raw_offset"):
        if not math.isfinite(getattr(spec, key)):
            raise ExportError(f"{spec.name}: {key} must be a finite number, got {getattr(spec, key)!r}")


def _names(spec: FirmwareSpec) -> dict[str, str]:
    return {"name": spec.name, "NAME": spec.name.upper()}


def _model_data_fields(tflite: bytes, spec: FirmwareSpec) -> dict[str, str]:
    hex_bytes = [f"0x{byte:02x}" for byte in tflite]
    lines = ("  " + ", ".join(hex_bytes[start:start + _BYTES_PER_LINE]) + ","
             for start in range(0, len(hex_bytes), _BYTES_PER_LINE))
    return {**_names(spec), "data_lines": "\n".join(lines), "data_len": str(len(tflite))}


def _settings_fields(model: model_file.ModelInfo, spec: FirmwareSpec) -> dict[str, str]:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"{spec.name}: the model has {len(model.inputs)} inputs and {len(model.outputs)} "
                          "outputs; export supports classifiers with exactly one of each")
    tensors = {"input": model.inputs[0], "output": model.outputs[0]}
    for role, tensor in tensors.items():
        if tensor.dtype not in _C_TYPES or tensor.scale is None:
            raise ExportError(f"{spec.name}: model {role} {tensor.name!r} is {tensor.dtype}, expected quantized "
                              "int8; convert with full-integer quantization (int8 input and output)")
    class_count = model.outputs[0].shape[-1] if model.outputs[0].shape else 1
    if len(spec.labels) != class_count:
        raise ExportError(f"{spec.name}: {len(spec.labels)} labels given but the model output "
                          f"{model.outputs[0].name!r} has {class_count} classes; give one label per class")
    fields = {
        **_names(spec),
        "input_elements": str(math.prod(model.inputs[0].shape)),
        "class_count": str(class_count),
        "labels": ",\n".join("    " + c_string(label) for label in spec.labels),
        "arena_bytes": str(spec.arena_bytes),
        "arena_with_margin": str(arena_with_margin(spec.arena_bytes)),
        "margin_percent": str(ARENA_MARGIN_PERCENT),
        "arena_alignment": str(ARENA_ALIGNMENT_BYTES),
        "raw_scale": _c_float(spec.raw_scale),
        "raw_offset": _c_float(spec.raw_offset),
        "raw_description": c_string(spec.raw_description),
    }
    for role, tensor in tensors.items():
        fields |= {
            f"{role}_dtype": tensor.dtype,
            f"{role}_ctype": _C_TYPES[tensor.dtype],
            f"{role}_shape_text": "x".join(str(dim) for dim in tensor.shape),
            f"{role}_rank": str(len(tensor.shape)),
            f"{role}_dims": ", ".join(str(dim) for dim in tensor.shape),
            f"{role}_scale": _c_float(tensor.scale),
            f"{role}_zero_point": str(tensor.zero_point),
        }
    return fields


def _c_float(value: float) -> str:
    # repr is the shortest text that reads back as the same double, so a float32 value survives the `f` suffix.
    return repr(float(value)) + "f"


def _resolver_fields(model: model_file.ModelInfo, spec: FirmwareSpec) -> dict[str, str]:
    unsupported = [name for name in model.op_names if name not in OP_RESOLVER_METHODS]
    if unsupported:
        raise ExportError(f"{spec.name}: TFLM's MicroMutableOpResolver has no registration for op(s) "
                          f"{', '.join(unsupported)}; replace them in the model or register a custom kernel by hand")
    return {
        **_names(spec),
        "op_names": ", ".join(model.op_names),
        "op_count": str(len(model.op_names)),
        "add_calls": ",\n".join(f"      resolver.{OP_RESOLVER_METHODS[name]}()" for name in model.op_names),
    }


def _render(template_name: str, fields: dict[str, str]) -> str:
    template = (resources.files("tinykd") / "templates" / template_name).read_text(encoding="utf-8")
    return Template(template).substitute(fields)


def _write_atomically(rendered: dict[str, str], out_dir: Path) -> tuple[Path, ...]:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # A sibling temp dir is on the same filesystem, so os.replace is an atomic rename per file.
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"cannot write firmware files next to {out_dir}: {error}") from error
    try:
        for file_name, text in rendered.items():
            (staging / file_name).write_text(text, encoding="utf-8", newline="\n")
        out_dir.mkdir(exist_ok=True)
        paths = []
        for file_name in rendered:
            os.replace(staging / file_name, out_dir / file_name)
            paths.append(out_dir / file_name)
        return tuple(paths)
    except OSError as error:
        raise ExportError(f"cannot write firmware files to {out_dir}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
