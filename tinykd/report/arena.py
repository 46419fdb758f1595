"""RAM: the smallest TFLM tensor arena, measured in the pip interpreter, then made true for a 32-bit Cortex-M.

The interpreter runs in a child process with a time limit (tinykd.tflm.Worker), because a corrupted model can
crash or hang TFLM. The measurement is the smallest arena in which `AllocateTensors()` succeeds and one
`Invoke()` runs, found by search (the planner needs temporary room, so `arena_used_bytes()` alone is too low).

On this 64-bit host TFLM's persistent structs are larger than on a 32-bit MCU. The correction subtracts, for the
structs the recording allocator counts, (64-bit size - 32-bit size) * count; sizes are from TFLM's
tensorflow/lite/core/c/common.h (TF_LITE_STATIC_MEMORY structs) and micro/micro_allocator.h, derived in
tinykd/report/README.md. Only structs allocated before memory planning are credited, so the planner's peak
cannot have been the binding constraint on a smaller 32-bit total. Everything else (kernel op data, the planner,
the allocator object) is kept at its 64-bit size: the result is an upper bound, never an under-estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinykd import tflm
from tinykd.report.graph import Graph

_ALIGNMENT = 16
TIME_LIMIT_S = tflm.TIME_LIMIT_S

# (bytes on a 64-bit host, bytes on a 32-bit Cortex-M, allocated before planning) per recorded struct; 32-bit
# sizes with 4-byte enums (-fno-short-enums), the larger of the two Arm EABI choices, so the credit stays safe.
# TfLiteEvalTensor {TfLitePtrUnion data; TfLiteIntArray* dims; TfLiteType type}: 8+8+4 -> 24 | 4+4+4 = 12.
# NodeAndRegistration {TfLiteNode (6 pointers + int) ; const TfLiteRegistration*}: 56+8 = 64 | 28+4 = 32.
# TfLiteTensor (static memory: TfLiteQuantization, params, data, dims, size_t bytes, type, allocation_type,
# bool): 64 | 40. Quantization record per tensor: TfLiteAffineQuantization {2 pointers, int32} 24 | 12, plus a
# one-element TfLiteIntArray of zero points, 8 | 8.
STRUCT_BYTES = {
    "TfLiteEvalTensor data": (24, 12, True),
    "NodeAndRegistration struct": (64, 32, True),
    "Persistent TfLiteTensor data": (64, 40, False),
    "Persistent TfLiteTensor quantization data": (16, 10, False),  # per allocation: (24 + 8) / 2 | (12 + 8) / 2
}


@dataclass(frozen=True, kw_only=True)
class Arena:
    """The arena measured on this host and its 32-bit figure (bytes)."""

    host_bytes: int  # smallest arena that allocates and invokes in the pip TFLM (reference kernels, 64-bit)
    host_nonpersistent_bytes: int  # head: activations, I/O tensors, scratch, as planned
    host_persistent_bytes: int  # tail: TFLM structs, kernel op data, quantization, planner
    correction_bytes: int  # 64-bit -> 32-bit shrink credited on counted structs
    records: dict  # the recording allocator's breakdown: name -> {"bytes", "count"}

    @property
    def bytes_32bit(self) -> int:
        return self.host_bytes - self.correction_bytes

    @property
    def persistent_32bit_bytes(self) -> int:
        return self.bytes_32bit - self.host_nonpersistent_bytes


class Worker(tflm.Worker):
    """TFLM's arena search in a long-lived child process (tinykd.tflm.Worker), with the 32-bit correction."""

    def measure(self, tflite: bytes, source: str = "model", subgraphs: int = 1) -> Arena:
        """The smallest arena that allocates and runs the model, with its 32-bit correction.

        Raises:
            ModelError: TFLM refused, crashed on or timed out on the model; the message names what TFLM said.
        """
        host_bytes, allocations = self.smallest_arena(tflite, source)
        return Arena(host_bytes=host_bytes, host_nonpersistent_bytes=allocations["head"],
                     host_persistent_bytes=host_bytes - allocations["head"],
                     correction_bytes=correction_bytes(allocations["records"], subgraphs),
                     records=allocations["records"])


def measure(tflite: bytes, source: str = "model", subgraphs: int = 1) -> Arena:
    """Measure one model in a fresh child process (see Worker.measure)."""
    with Worker() as worker:
        return worker.measure(tflite, source, subgraphs)


def correction_bytes(records: dict, subgraphs: int = 1) -> int:
    """64-bit minus 32-bit bytes of the recorded structs allocated before planning (see STRUCT_BYTES).

    Each struct array is one allocation per subgraph; the 32-bit array is charged a full alignment step per
    subgraph, so rounding can only make the credit smaller than the true saving.
    """
    saved = 0
    for name, (_, target, before_planning) in STRUCT_BYTES.items():
        if before_planning and name in records:
            record = records[name]
            saved += max(record["bytes"] - record["count"] * target - _ALIGNMENT * subgraphs, 0)
    return saved


def kernel_scratch_bytes(graph: Graph, simd: str) -> int:
    """The largest scratch buffer a CMSIS-NN kernel of the model requests (the pip interpreter runs TFLM's
    reference kernels, which request none).

    From CMSIS-NN's *_get_buffer_size functions: a non-1x1 convolution keeps two im2col columns of int16 (DSP) or
    four of int8 (Helium), both 4*Cin*Kh*Kw bytes; depthwise keeps Cin*Kh*Kw int16 values (DSP) or 4 blocks of
    124 channels (Helium); average pooling keeps Cin int32 sums. A scratch buffer lives only during its operator,
    so the planner needs at most the largest one on top of the planned activations.
    """
    largest = 0
    for layer in graph.layers:
        channels = layer.input_shape[-1] if layer.input_shape else 0
        if layer.op == "CONV_2D" and layer.window_elements > 1:
            need = 4 * channels * layer.window_elements
        elif layer.op == "DEPTHWISE_CONV_2D":
            need = 2 * channels * layer.window_elements
            if simd == "helium":
                need = max(need, 4 * 124 * layer.window_elements)
        elif layer.op == "AVERAGE_POOL_2D":
            need = 4 * channels
        else:
            need = 0
        largest = max(largest, _align(need) if need else 0)
    return largest


def kernel_persistent_bytes(graph: Graph, simd: str) -> int:
    """Persistent data CMSIS-NN kernels keep beyond the reference kernels: with Helium, fully connected and
    1x1 convolutions precompute per-output-channel kernel sums (int32) in Prepare."""
    if simd != "helium":
        return 0
    return sum(_align(4 * layer.output_shape[-1]) for layer in graph.layers
               if layer.output_shape and (layer.op == "FULLY_CONNECTED"
                                          or (layer.op == "CONV_2D" and layer.window_elements == 1)))


def _align(size: int) -> int:
    return (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT
