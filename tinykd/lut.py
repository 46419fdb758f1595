"""TFLite Micro LUT compression: clustered int8 weights become bit-packed indices into small value tables.

TFLM's own compressor (`tflite_micro.tensorflow.lite.micro.compression`) rewrites each chosen weight tensor as
indices plus a value table and inserts a DECODE operator (custom op `TFLM_DECODE`) in front of the operator that
reads it. The decoded weights live in the arena only while that operator runs, so compression trades flash for
arena and a little latency; `Compressed.decompression_memory_bytes` says how much arena, measured in TFLM.

One table per quantization channel, never one for a whole per-channel tensor: TFLM's decoder takes the channel
count and axis from the weight tensor's quantization (one table per scale, along `quantized_dimension`), not
from the compression spec, so the spec's axis must be that dimension: 0 for CONV_2D and FULLY_CONNECTED filters
(output channels first), 3 for DEPTHWISE_CONV_2D ([1, H, W, channels]). A per-tensor table on a per-channel
tensor runs but decodes wrong weights (shared/reference/tflm_compression_notes.md). Every result is checked: the
compressed model must give the uncompressed model's exact outputs in the real TFLM interpreter.

Reads and returns bytes; writes no file and does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np

from tinykd.errors import ConversionError

_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_FILTER_INPUT = 1
# TFLM decodes 2, 3 and 4-bit int8 tables with unrolled fast paths; more than 16 values means "not clustered".
_AUTO_BITS = (2, 3, 4)
_MAX_BITS = 7  # the LUT header's bit-width field
_HEADER_BYTES = 16  # DECODE common metadata in front of the value tables
# Flatbuffer bookkeeping one compressed tensor adds besides its data, measured with tflite-micro
# 0.dev20261023: a DECODE operator, an ancillary and a decoded tensor (tables, vectors, buffer entries, alignment)
# take about 165 B plus both names (the tensor's name + "_ancillary" / "_decoded"). The per-channel scales and
# zero points move from the encoded tensor to the decoded one (_without_encoded_quantization), costing nothing.
_PLUMBING_BYTES = 164
_DECODE_OP = "TFLM_DECODE"
_ALIGNMENT = 16  # TFLM aligns every tensor it places to 16 bytes


@dataclass(frozen=True, kw_only=True)
class TensorChoice:
    """What happened to one weight tensor (the filter of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED)."""

    name: str
    op: str
    shape: tuple[int, ...]
    axis: int | None  # the quantized (channel) dimension the tables follow; None for one per-tensor scale
    channels: int  # value tables: one per quantization scale
    unique_values: int  # most distinct int8 values in any one channel
    bits: int | None  # index width, or None when left uncompressed
    bytes_before: int  # dense int8 data
    bytes_after: int  # packed indices + value tables + 16-byte header; bytes_before when left uncompressed
    reason: str


@dataclass(frozen=True, kw_only=True)
class Compressed:
    """A LUT-compressed .tflite and how it was made; `tflite` is the input unchanged when nothing paid off."""

    tflite: bytes
    tensors: tuple[TensorChoice, ...]
    # Extra TFLM arena the compressed model needs (measured, 64-bit host): by default the decoded weights are
    # planned in the arena like activations, each alive only while its operator runs.
    decompression_memory_bytes: int
    identical_outputs: bool  # TFLM outputs equal the uncompressed model's on every checked input
    checked_samples: int  # inputs compared in TFLM (0 when nothing was compressed: the bytes are unchanged)

    @property
    def compressed_tensors(self) -> tuple[TensorChoice, ...]:
        return tuple(choice for choice in self.tensors if choice.bits is not None)

    @property
    def alt_decompression_memory_bytes(self) -> int:
        """The region firmware can give TFLM for decoded weights instead (MicroInterpreter::SetDecompressionMemory):
        the largest decoded tensor, as TFLM reuses the region for each operator. The arena then grows only by
        the DECODE operators' state (a few hundred bytes)."""
        return max((_aligned(choice.bytes_before) for choice in self.compressed_tensors), default=0)


@dataclass(frozen=True)
class _Weight:
    index: int  # tensor index in subgraph 0
    name: str
    op: str
    values: np.ndarray
    axis: int | None


def compress(tflite: bytes, *, bits: int | None = None, check_inputs: np.ndarray) -> Compressed:
    """LUT-compress the clustered weight tensors of an int8 model with TFLM's compressor, checked in TFLM.

    Per tensor the index width is the smallest of 2, 3 and 4 bits (or exactly `bits`) that holds the most
    distinct values of any channel. A tensor stays dense when it has more values than that (not clustered), or
    when its indices and tables would not be smaller than the dense kernel (small first-layer and depthwise
    kernels); each choice carries its reason.

    Args:
        tflite: a full-int8 model, e.g. from tinykd.convert, whose kernels were clustered (tinykd.cluster).
        bits: index width to use for every tensor (1-7); None picks 2, 3 or 4 per tensor.
        check_inputs: int8 model inputs, shape (samples, *input shape without batch), already quantized.

    Raises:
        ConversionError: TFLM's compressor failed, or the compressed model's outputs differ from the
            uncompressed model's (names the tensor).
        ModelError: TFLM cannot allocate or run one of the models.
    """
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    if bits is not None and not 1 <= bits <= _MAX_BITS:
        raise ValueError(f"bits={bits}: TFLM's LUT indices are 1 to {_MAX_BITS} bits wide")
    model = model_editor.read(bytes(tflite))
    inputs = _checked_inputs(check_inputs, model)
    weights = _weights(model)
    choices = [_choose(weight, bits) for weight in weights]
    chosen = [weight for weight, choice in zip(weights, choices) if choice.bits is not None]
    if not chosen:
        return Compressed(tflite=bytes(tflite), tensors=tuple(choices), decompression_memory_bytes=0,
                          identical_outputs=True, checked_samples=0)
    bits_by_index = {weight.index: choice.bits for weight, choice in zip(weights, choices)}
    compressed = _compress(tflite, chosen, bits_by_index)
    choices = _confirm(compressed, weights, choices)
    memory, differing = _check(tflite, compressed, inputs)
    if differing:
        kept = {choice.name for choice in choices if choice.bits is not None}
        culprit = _culprit(tflite, [weight for weight in chosen if weight.name in kept], bits_by_index, inputs)
        raise ConversionError(
            f"{culprit}: TFLite Micro's outputs differ after LUT compression on {differing} of {len(inputs)} "
            "inputs. The tflite-micro compressor or decoder mishandles this tensor; build without LUT "
            "compression and report it with the installed tflite-micro version.")
    return Compressed(tflite=compressed, tensors=tuple(choices), decompression_memory_bytes=memory,
                      identical_outputs=True, checked_samples=len(inputs))


def unique_values_per_channel(tflite: bytes) -> dict[str, int]:
    """The most distinct int8 values in any one channel, per weight tensor (filter) name.

    A channel is what TFLM decodes with one table: a slice along the quantized dimension for per-channel
    quantized tensors, the whole tensor for a per-tensor one. After clustering to N clusters this is at most N.
    """
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    return {weight.name: _most_unique(weight) for weight in _weights(model_editor.read(bytes(tflite)))}


def _weights(model) -> list[_Weight]:
    """The constant int8 filters of the weighted operators of subgraph 0, each once."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb

    subgraph = model.subgraphs[0]
    found: dict[int, _Weight] = {}
    for operator in subgraph.operators:
        if operator.opcode_name not in _WEIGHTED_OPS or len(operator.inputs) <= _FILTER_INPUT:
            continue
        tensor = operator.inputs[_FILTER_INPUT]
        # Tensors without data (activations) have no buffer; reading their .array would raise.
        if (tensor is None or tensor.dtype != schema_fb.TensorType.INT8 or tensor.buffer is None
                or not tensor.buffer.data or tensor.index in found):
            continue
        quantization = tensor.quantization
        per_channel = quantization is not None and len(quantization.scales) > 1
        found[tensor.index] = _Weight(index=tensor.index, name=tensor.name or f"tensor {tensor.index}",
                                      op=operator.opcode_name, values=tensor.array,
                                      axis=int(quantization.axis or 0) if per_channel else None)
    return list(found.values())


def _channels(weight: _Weight) -> np.ndarray:
    """The weight as (channels, elements): one row per value table TFLM decodes."""
    if weight.axis is None:
        return weight.values.reshape(1, -1)
    return np.moveaxis(weight.values, weight.axis, 0).reshape(weight.values.shape[weight.axis], -1)


def _most_unique(weight: _Weight) -> int:
    return max(len(np.unique(row)) for row in _channels(weight))


def _choose(weight: _Weight, bits: int | None) -> TensorChoice:
    """Compress or not, and why: the index width that fits, and whether indices and tables beat dense bytes."""
    rows = _channels(weight)
    unique = _most_unique(weight)
    before = weight.values.size
    common = dict(name=weight.name, op=weight.op, shape=tuple(weight.values.shape), axis=weight.axis,
                  channels=len(rows), unique_values=unique, bytes_before=before)
    if bits is None:
        width = next((b for b in _AUTO_BITS if 2 ** b >= unique), None)
        if width is None:
            return TensorChoice(**common, bits=None, bytes_after=before,
                                reason=f"{unique} distinct values in one channel, more than {2 ** _AUTO_BITS[-1]}: "
                                       "not clustered; cluster the model to at most 16 clusters")
    elif 2 ** bits < unique:
        needed = max(1, (unique - 1).bit_length())
        return TensorChoice(**common, bits=None, bytes_after=before,
                            reason=f"{unique} distinct values in one channel need {needed}-bit indices, "
                                   f"{bits} requested")
    else:
        width = bits
    # TFLM's compressor pads every channel's table to the longest one, one int8 per entry.
    after = -(-before * width // 8) + _HEADER_BYTES + len(rows) * unique
    overhead = _PLUMBING_BYTES + 2 * len(weight.name.encode())
    if after + overhead >= before:
        return TensorChoice(**common, bits=None, bytes_after=before,
                            reason=f"{width}-bit indices and tables ({after} B, +{overhead} B of DECODE "
                                   f"bookkeeping) are not smaller than the {before} B dense kernel")
    return TensorChoice(**common, bits=width, bytes_after=after,
                        reason=f"at most {unique} values per channel: {width}-bit indices into "
                               f"{len(rows)} table(s) of {unique}")


def _lut_mode(weight: _Weight):
    """The table layout TFLM's decoder reads for this tensor: per quantization channel (see the module doc)."""
    from tflite_micro.tensorflow.lite.micro.compression import spec

    return spec.PerTensor() if weight.axis is None else spec.PerChannel(axis=weight.axis)


def _compress(tflite: bytes, weights: list[_Weight], bits_by_index: dict[int, int]) -> bytes:
    """TFLM's compressor on `weights`; its notices (an index wider than needed is deliberate) are not shown."""
    from tflite_micro.tensorflow.lite.micro import compression
    from tflite_micro.tensorflow.lite.micro.compression import compressor, spec

    specs = [spec.Tensor(subgraph=0, tensor=weight.index, compression=[spec.LookUpTableCompression(
        index_bitwidth=bits_by_index[weight.index], mode=_lut_mode(weight))]) for weight in weights]
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # buffers shared with a dense tensor are skipped; _confirm reports it
            compressed = bytes(compression.compress(bytes(tflite), specs))
    except compressor.CompressionError as error:
        raise ConversionError(f"TFLite Micro's compressor failed: {error}") from None
    return _without_encoded_quantization(compressed)


def _without_encoded_quantization(compressed: bytes) -> bytes:
    """Drop the quantization parameters the compressor leaves on each encoded (index) tensor.

    tflite-micro's compressor means to drop them (decode_insert sets the encoded tensor's quantization to None)
    but its model_editor writes the original ones back when a tensor's quantization is None, so each compressed
    tensor carries its per-channel scales and zero points twice (12 B a channel). TFLM's DECODE operator reads
    the tables' layout from the decoded tensor; `compress` checks the outputs stay identical.
    """
    from tinykd import model_file

    def drop(model) -> None:
        decode = {index for index, code in enumerate(model.operatorCodes) if code.customCode == _DECODE_OP.encode()}
        for subgraph in model.subgraphs:
            for operator in subgraph.operators:
                if operator.opcodeIndex in decode:
                    subgraph.tensors[operator.inputs[0]].quantization = None

    return model_file.rewrite(compressed, drop)


def _confirm(compressed: bytes, weights: list[_Weight], choices: list[TensorChoice]) -> list[TensorChoice]:
    """The choices as the compressed model has them: TFLM's compressor leaves a tensor dense when another,
    uncompressed tensor shares its buffer (the dense data would stay in the model anyway)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    subgraph = model_editor.read(compressed).subgraphs[0]
    decoded = {tensor.name for operator in subgraph.operators if operator.opcode_name == _DECODE_OP
               for tensor in operator.outputs}
    confirmed = []
    for weight, choice in zip(weights, choices):
        if choice.bits is not None and f"{weight.name}_decoded" not in decoded:
            choice = replace(choice, bits=None, bytes_after=choice.bytes_before,
                             reason="left dense by TFLM's compressor: its buffer is shared with a tensor that "
                                    "stays uncompressed")
        confirmed.append(choice)
    return confirmed


def _check(original: bytes, compressed: bytes, inputs: np.ndarray) -> tuple[int, int]:
    """Extra arena the compressed model needs, and on how many inputs its TFLM outputs differ from the original's.

    Arenas are the smallest that allocate and invoke (tinykd.report.arena); the outputs then come from TFLM at
    those sizes (tinykd.tflm). Both run in child processes, so a TFLM crash cannot take this process down.
    """
    from tinykd.report import arena

    with arena.Worker() as worker:
        original_arena = worker.measure(original, "uncompressed model").host_bytes
        compressed_arena = worker.measure(compressed, "LUT-compressed model").host_bytes
    expected = _outputs(original, inputs, original_arena)
    actual = _outputs(compressed, inputs, compressed_arena)
    return compressed_arena - original_arena, int(np.any(expected != actual, axis=1).sum())


def _culprit(tflite: bytes, weights: list[_Weight], bits_by_index: dict[int, int], inputs: np.ndarray) -> str:
    """The first tensor that alone changes the outputs when compressed, or all of them if none does alone."""
    for weight in weights:
        _, differing = _check(tflite, _compress(tflite, [weight], bits_by_index), inputs)
        if differing:
            return f"tensor {weight.name!r} ({weight.op}, {bits_by_index[weight.index]}-bit)"
    return "tensors " + ", ".join(repr(weight.name) for weight in weights) + " (together)"


def _outputs(tflite: bytes, inputs: np.ndarray, arena_bytes: int) -> np.ndarray:
    """Every output of the model, flattened and concatenated, per input, from the TFLM interpreter."""
    from tinykd import tflm

    return np.concatenate(tflm.outputs(tflite, inputs, arena_bytes), axis=1)


def _aligned(size: int) -> int:
    return -(-size // _ALIGNMENT) * _ALIGNMENT


def _checked_inputs(check_inputs: np.ndarray, model) -> np.ndarray:
    inputs = np.asarray(check_inputs)
    shape = tuple(model.subgraphs[0].inputs[0].shape[1:])
    if inputs.dtype != np.int8 or inputs.ndim < 1 or len(inputs) == 0 or tuple(inputs.shape[1:]) != shape:
        raise ValueError(f"check_inputs must be a non-empty int8 array of shape (samples, {', '.join(map(str, shape))})"
                         f"; got {inputs.dtype} {inputs.shape}. Quantize them with tinykd.verify.quantize_input")
    return inputs
