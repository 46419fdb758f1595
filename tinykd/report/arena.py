"""RAM: the smallest TFLM tensor arena, measured in the pip interpreter, then made true for a 32-bit Cortex-M.

The interpreter runs in a child process (tinykd.report._child) with a time limit, because a corrupted model can
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

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from tinykd.errors import ModelError
from tinykd.report.graph import Graph

_LENGTH = struct.Struct("<I")
_ALIGNMENT = 16
TIME_LIMIT_S = 20.0

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


class Worker:
    """A long-lived child process running the pip TFLM interpreter; restarted after a crash or a hang."""

    def __init__(self, time_limit_s: float = TIME_LIMIT_S):
        self.time_limit_s = time_limit_s
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process.stdout.close()
            self._process = None

    def measure(self, tflite: bytes, source: str = "model", subgraphs: int = 1) -> Arena:
        """The smallest arena that allocates and runs the model, with its 32-bit correction.

        Raises:
            ModelError: TFLM refused, crashed on or timed out on the model; the message names what TFLM said.
        """
        reply = self._ask({"mode": "measure"}, tflite, source)
        if reply.get("crashed"):
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({reply['crashed']}); the file is "
                             "corrupt or uses something TFLM cannot run")
        if not reply["ok"]:
            raise ModelError(f"{source}: TFLite Micro cannot run the model: {_reason(reply['log'])}")
        allocations = reply["allocations"]
        return Arena(host_bytes=reply["arena_bytes"], host_nonpersistent_bytes=allocations["head"],
                     host_persistent_bytes=reply["arena_bytes"] - allocations["head"],
                     correction_bytes=correction_bytes(allocations["records"], subgraphs),
                     records=allocations["records"])

    def check(self, tflite: bytes, arena_bytes: int = 1 << 20, source: str = "model") -> bool:
        """Whether TFLM allocates and invokes the model in `arena_bytes` (one attempt, no search).

        Raises:
            ModelError: TFLM crashed or did not finish within the time limit.
        """
        reply = self._ask({"mode": "check", "arena_bytes": arena_bytes}, tflite, source)
        if reply.get("crashed"):
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({reply['crashed']}); the file is "
                             "corrupt or uses something TFLM cannot run")
        return bool(reply["ok"])

    def _ask(self, header: dict, tflite: bytes, source: str) -> dict:
        process = self._start()
        encoded = json.dumps(header).encode()
        try:
            process.stdin.write(_LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(tflite)) + bytes(tflite))
            process.stdin.flush()
            payload = self._read_reply(process)
        except (BrokenPipeError, EOFError):
            self._reap()
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({_exit_reason(process)}); the file is "
                             "corrupt or uses something TFLM cannot run") from None
        except TimeoutError:
            self._reap()
            raise ModelError(f"{source}: TFLite Micro did not finish loading the model within "
                             f"{self.time_limit_s:g} s; the file is corrupt or the model is too large") from None
        return json.loads(payload)

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen([sys.executable, "-m", "tinykd.report._child"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return self._process

    def _read_reply(self, process: subprocess.Popen) -> bytes:
        deadline = time.monotonic() + self.time_limit_s
        prefix = _read_exactly(process.stdout, _LENGTH.size, deadline)
        return _read_exactly(process.stdout, _LENGTH.unpack(prefix)[0], deadline)

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


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


def _read_exactly(stream, size: int, deadline: float) -> bytes:
    chunks, missing = [], size
    descriptor = stream.fileno()
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(descriptor, missing)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _reason(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("[RecordingMicroAllocator]")]
    return "; ".join(useful[-3:]) or "allocation failed"


def _exit_reason(process: subprocess.Popen) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "no reply"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


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
