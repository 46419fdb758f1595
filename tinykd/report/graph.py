"""The operators of a .tflite model with their shapes and MACs, checked before anything runs it.

Read with the schema shipped in tflite-micro (no TensorFlow). The structural checks exist because the TFLM
interpreter trusts the flatbuffer: an operator index past the tensor table or a stride of zero crashes it.
MACs are counted the way MLPerf Tiny publishes them: conv Hout*Wout*Cout*Kh*Kw*Cin, depthwise Hout*Wout*C*Kh*Kw,
fully connected in*out; every other operator has 0 MACs and is costed by the elements it writes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

from tinykd import model_file
from tinykd.errors import ModelError

_BUILTIN_NAMES = {value: name for name, value in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")}
_DTYPE_NAMES = {value: name.lower() for name, value in vars(schema_fb.TensorType).items() if not name.startswith("_")}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1, "int16": 2, "int8": 1,
                "float64": 8, "uint64": 8, "uint32": 4, "uint16": 2, "bfloat16": 2}
# A tensor this large cannot exist on a microcontroller; a corrupted shape usually claims far more.
_MAX_TENSOR_ELEMENTS = 2**31 - 1
_WINDOWED = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"}
_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One operator: what it is, what it writes and how much arithmetic it does."""

    index: int
    op: str
    version: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: str
    weight_dtype: str | None
    macs: int
    output_elements: int
    window_elements: int  # Kh*Kw of a convolution or pooling window, else 1


@dataclass(frozen=True, kw_only=True)
class Graph:
    """Subgraph 0 of a model as layers, plus what decides whether and how TFLM runs it."""

    layers: tuple[Layer, ...]
    model_bytes: int
    subgraphs: int
    precision: str  # "int8", "int16x8", "float32" or "hybrid"

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(sorted({layer.op for layer in self.layers}))


def read(tflite: bytes, source: str = "model") -> Graph:
    """Parse and structurally check a .tflite model.

    Raises:
        ModelError: the bytes are not a complete, consistent TFLite flatbuffer.
    """
    model_file.read(tflite, source)  # header, identifier and every table; clear errors for garbage
    try:
        model = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytearray(tflite), 0))
        _check_structure(model, len(tflite), source)
        layers = tuple(_layer(model, model.subgraphs[0], index, operator)
                       for index, operator in enumerate(model.subgraphs[0].operators or []))
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, AttributeError) as error:
        raise ModelError(f"{source}: corrupt TFLite flatbuffer ({type(error).__name__}: {error}); "
                         "re-export the .tflite file") from error
    return Graph(layers=layers, model_bytes=len(tflite), subgraphs=len(model.subgraphs),
                 precision=_precision(layers))


def _check_structure(model: "schema_fb.ModelT", size: int, source: str) -> None:
    buffers = model.buffers or []
    codes = model.operatorCodes or []
    for buffer_index, buffer in enumerate(buffers):
        if buffer.offset and (buffer.offset + buffer.size > size):
            raise ModelError(f"{source}: buffer {buffer_index} points past the end of the file; the file is "
                             "truncated or corrupt")
    for subgraph_index, subgraph in enumerate(model.subgraphs):
        tensors = subgraph.tensors or []
        where = f"{source}: subgraph {subgraph_index}"
        for tensor_index, tensor in enumerate(tensors):
            _check_tensor(tensor, buffers, f"{where}: tensor {tensor_index}")
        for name, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
            _check_indices(_ints(indices), len(tensors), f"{where}: {name}s", optional=False)
        for operator_index, operator in enumerate(subgraph.operators or []):
            here = f"{where}: operator {operator_index}"
            if not 0 <= operator.opcodeIndex < len(codes):
                raise ModelError(f"{here}: operator code {operator.opcodeIndex} is not in the model's "
                                 f"{len(codes)} codes; the file is corrupt")
            _check_indices(_ints(operator.inputs), len(tensors), f"{here}: inputs", optional=True)
            _check_indices(_ints(operator.outputs), len(tensors), f"{here}: outputs", optional=False)
            _check_options(operator.builtinOptions, here)


def _check_tensor(tensor: "schema_fb.TensorT", buffers: list, where: str) -> None:
    dtype = _DTYPE_NAMES.get(tensor.type)
    if dtype is None:
        raise ModelError(f"{where}: unknown tensor type {tensor.type}; the file is corrupt")
    shape = _ints(tensor.shape)
    if any(dim < 0 for dim in shape) or math.prod(shape) > _MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{where}: impossible shape {shape}; the file is corrupt")
    if not 0 <= tensor.buffer < max(len(buffers), 1):
        raise ModelError(f"{where}: buffer {tensor.buffer} is not in the model's {len(buffers)} buffers")
    buffer = buffers[tensor.buffer] if buffers else None
    data = None if buffer is None or isinstance(buffer.data, int) else buffer.data
    stored = len(data) if data is not None else (buffer.size if buffer is not None else 0)
    if stored and dtype in _DTYPE_BYTES and stored != math.prod(shape) * _DTYPE_BYTES[dtype]:
        raise ModelError(f"{where}: holds {stored} bytes but shape {shape} of {dtype} needs "
                         f"{math.prod(shape) * _DTYPE_BYTES[dtype]}; the file is corrupt")
    quantization = tensor.quantization
    if quantization is not None and quantization.scale is not None and quantization.zeroPoint is not None:
        if len(quantization.zeroPoint) not in (0, len(quantization.scale)):
            raise ModelError(f"{where}: {len(quantization.scale)} scales but {len(quantization.zeroPoint)} "
                             "zero points; the file is corrupt")


def _check_indices(indices: list[int], count: int, where: str, optional: bool) -> None:
    for index in indices:
        if not (0 <= index < count or (optional and index == -1)):
            raise ModelError(f"{where}: tensor index {index} is not in the subgraph's {count} tensors; "
                             "the file is corrupt")


def _check_options(options, where: str) -> None:
    # TFLM divides by strides and multiplies by dilations without checking them.
    for name in ("strideW", "strideH", "dilationWFactor", "dilationHFactor", "filterWidth", "filterHeight"):
        value = getattr(options, name, None)
        if value is not None and not 0 < value < 2**16:
            raise ModelError(f"{where}: {name} is {value}; the file is corrupt")


def _layer(model: "schema_fb.ModelT", subgraph: "schema_fb.SubGraphT", index: int,
           operator: "schema_fb.OperatorT") -> Layer:
    code = model.operatorCodes[operator.opcodeIndex]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    op = _custom_name(code.customCode) if number == schema_fb.BuiltinOperator.CUSTOM else _BUILTIN_NAMES[number]
    tensors = subgraph.tensors
    inputs = [tensors[i] for i in _ints(operator.inputs) if i >= 0]
    output_shape = tuple(_ints(tensors[_ints(operator.outputs)[0]].shape)) if _ints(operator.outputs) else ()
    output_elements = math.prod(output_shape)
    weights = inputs[1] if op in _WEIGHTED and len(inputs) > 1 else None
    window = 1
    if op in _WINDOWED:
        window = operator.builtinOptions.filterWidth * operator.builtinOptions.filterHeight
    elif op in ("CONV_2D", "DEPTHWISE_CONV_2D") and weights is not None and len(_ints(weights.shape)) == 4:
        window = _ints(weights.shape)[1] * _ints(weights.shape)[2]
    return Layer(index=index, op=op, version=int(code.version),
                 input_shape=tuple(_ints(inputs[0].shape)) if inputs else (), output_shape=output_shape,
                 dtype=_DTYPE_NAMES[inputs[0].type] if inputs else "none",
                 weight_dtype=_DTYPE_NAMES[weights.type] if weights is not None else None,
                 macs=_macs(op, [tuple(_ints(t.shape)) for t in inputs], output_shape),
                 output_elements=output_elements, window_elements=window)


def _macs(op: str, input_shapes: list[tuple[int, ...]], output_shape: tuple[int, ...]) -> int:
    outputs = math.prod(output_shape)
    if len(input_shapes) < 2 or not input_shapes[1]:
        return 0
    weights = input_shapes[1]
    if op == "CONV_2D" and len(weights) == 4:  # [Cout, Kh, Kw, Cin / groups]
        return outputs * weights[1] * weights[2] * weights[3]
    if op == "DEPTHWISE_CONV_2D" and len(weights) == 4:  # [1, Kh, Kw, Cout]
        return outputs * weights[1] * weights[2]
    if op == "FULLY_CONNECTED":  # [units, depth]
        return outputs * weights[-1]
    if op == "TRANSPOSE_CONV" and len(input_shapes) > 2 and len(weights) == 4:  # inputs: shape, weights, data
        return math.prod(input_shapes[2]) * weights[0] * weights[1] * weights[2]
    if op == "BATCH_MATMUL":
        return outputs * input_shapes[0][-1]
    return 0


def _precision(layers: tuple[Layer, ...]) -> str:
    weighted = [layer for layer in layers if layer.weight_dtype is not None]
    if any(layer.dtype == "float32" and layer.weight_dtype in ("int8", "uint8") for layer in weighted):
        return "hybrid"
    if any(layer.dtype == "float32" for layer in layers):
        return "float32"
    if any(layer.dtype == "int16" for layer in weighted):
        return "int16x8"
    return "int8"


def hybrid_layers(graph: Graph) -> tuple[Layer, ...]:
    """Layers with float activations and int8 weights (dynamic-range quantization), which TFLM refuses."""
    return tuple(layer for layer in graph.layers
                 if layer.dtype == "float32" and layer.weight_dtype in ("int8", "uint8"))


def _ints(values) -> list[int]:
    # The object API gives a numpy array, or a list, or 0 when the vector is absent.
    return [] if values is None or isinstance(values, int) else [int(value) for value in values]


def _custom_name(value: bytes | str | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
