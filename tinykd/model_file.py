"""Read what firmware needs to know about a .tflite flatbuffer, without importing TensorFlow.

The schema comes from the tflite-micro pip package, so this module reads models exactly as the TFLM
interpreter we verify against does, and `tinykd report` / `tinykd export` never pay for TensorFlow.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from tinykd.errors import ModelError

_FILE_IDENTIFIER = b"TFL3"
# A flatbuffer starts with a 4-byte root offset, then the 4-byte file identifier.
_IDENTIFIER_OFFSET = 4

# Garbage or truncated bytes make the generated flatbuffer reader fail in these ways: struct and numpy
# read past the end, vector lengths index nothing, strings are not UTF-8.
_PARSE_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError)


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


_BUILTIN_NAMES = _enum_names(schema_fb.BuiltinOperator)
_DTYPE_NAMES = {value: name.lower() for value, name in _enum_names(schema_fb.TensorType).items()}


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One input or output tensor, with per-tensor quantization (None when the tensor is not quantized)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True, kw_only=True)
class OperatorInfo:
    """One node of the graph: the schema's builtin name (e.g. "CONV_2D"), or the custom code of a custom op."""

    name: str
    version: int


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Inputs, outputs and operators (one per node, in execution order) of subgraph 0."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]

    @property
    def op_names(self) -> tuple[str, ...]:
        """Distinct operator names, sorted: what an op resolver must register."""
        return tuple(sorted({operator.name for operator in self.operators}))


def read(tflite: bytes, source: str = "model") -> ModelInfo:
    """Parse a .tflite flatbuffer into a ModelInfo.

    Args:
        tflite: the flatbuffer bytes.
        source: what to call the model in error messages, usually its path.

    Raises:
        ModelError: the bytes are not a complete TFLite flatbuffer.
    """
    if len(tflite) < _IDENTIFIER_OFFSET + len(_FILE_IDENTIFIER):
        raise ModelError(f"{source}: {len(tflite)} bytes is too short to be a TFLite flatbuffer; "
                         "pass the bytes of a .tflite file")
    identifier = bytes(tflite[_IDENTIFIER_OFFSET:_IDENTIFIER_OFFSET + len(_FILE_IDENTIFIER)])
    if identifier != _FILE_IDENTIFIER:
        raise ModelError(f"{source}: not a TFLite flatbuffer: file identifier at offset 4 is {identifier!r}, "
                         f"expected {_FILE_IDENTIFIER!r}; pass the bytes of a .tflite file")
    try:
        # The object API unpacks every table and buffer, so a truncated file fails here rather than later.
        model = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytearray(tflite), 0))
        return _model_info(model, source)
    except _PARSE_ERRORS as error:
        raise ModelError(f"{source}: corrupt or truncated TFLite flatbuffer ({type(error).__name__}: {error}); "
                         "re-export the .tflite file") from error


def rewrite(tflite: bytes, edit: Callable[["schema_fb.ModelT"], None]) -> bytes:
    """The model with `edit` applied to its unpacked object tree, packed again.

    Everything `edit` leaves alone is written back as it was (buffer data aligned to 4 bytes, as the TFLite
    converter and tflite-micro's compressor also write it).
    """
    import flatbuffers

    model = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytearray(tflite), 0))
    edit(model)
    builder = flatbuffers.Builder(len(tflite))
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _model_info(model: "schema_fb.ModelT", source: str) -> ModelInfo:
    if not model.subgraphs:
        raise ModelError(f"{source}: the TFLite model has no subgraph; re-export the .tflite file")
    subgraph = model.subgraphs[0]
    operator_codes = model.operatorCodes or []
    tensors = subgraph.tensors or []
    return ModelInfo(
        inputs=tuple(_tensor_info(tensors[index]) for index in _indices(subgraph.inputs)),
        outputs=tuple(_tensor_info(tensors[index]) for index in _indices(subgraph.outputs)),
        operators=tuple(_operator_info(operator_codes[operator.opcodeIndex], source)
                        for operator in subgraph.operators or []),
    )


def _indices(values) -> list[int]:
    # The object API gives a numpy array, or a list, or 0 when the vector is absent.
    return [] if values is None or isinstance(values, int) else [int(value) for value in values]


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _tensor_info(tensor: "schema_fb.TensorT") -> TensorInfo:
    quantization = tensor.quantization
    has_scale = quantization is not None and quantization.scale is not None and len(quantization.scale) > 0
    has_zero_point = has_scale and quantization.zeroPoint is not None and len(quantization.zeroPoint) > 0
    return TensorInfo(
        name=_text(tensor.name),
        shape=tuple(_indices(tensor.shape)),
        dtype=_DTYPE_NAMES.get(tensor.type, f"type_{tensor.type}"),
        scale=float(quantization.scale[0]) if has_scale else None,
        zero_point=int(quantization.zeroPoint[0]) if has_zero_point else (0 if has_scale else None),
    )


def _operator_info(operator_code: "schema_fb.OperatorCodeT", source: str) -> OperatorInfo:
    # Codes above 127 live in builtinCode; older files only fill the int8 deprecatedBuiltinCode (TFLM's rule).
    code = max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)
    if code == schema_fb.BuiltinOperator.CUSTOM:
        name = _text(operator_code.customCode)
    elif code in _BUILTIN_NAMES:
        name = _BUILTIN_NAMES[code]
    else:
        raise ModelError(f"{source}: builtin operator code {code} is not in the TFLite schema of the installed "
                         "tflite-micro; upgrade tflite-micro or convert with an older TensorFlow")
    return OperatorInfo(name=name, version=int(operator_code.version))
