"""Flash: the model's bytes plus TFLM runtime code (framework core and each kernel the model uses).

The framework figure is published (tensorflow/lite/micro/examples/memory_footprint/README.md: 9,732 B of .text
for the interpreter and memory planner on a Cortex-M3; tensorflow.org/lite/microcontrollers: "the core runtime
fits in 16 KB on an Arm Cortex M3", about 22 KB with the speech model's ops). No per-kernel CMSIS-NN sizes are
published, so each kernel is an estimate with a range, and the report says so. It assumes the firmware registers
exactly the model's ops (MicroMutableOpResolver, as `tinykd export` generates): AllOpsResolver pulls in about
200 KB of unused kernels (veysiadn/acustic-emission-models, Arduino Nano 33 BLE).
Not counted: startup code, HAL/BSP, the C library (printf with floats alone is 10-30 KB), the application.
"""

from __future__ import annotations

from dataclasses import dataclass

# The core runtime: point is the published "fits in 16 KB" statement; the range runs from the measured 9,732 B
# (no op resolver, no flatbuffer parsing helpers) to 16 KB plus 25% for newer releases' additions.
CORE_BYTES = (16_384, 9_732, 20_480)
# Estimated .text per kernel with CMSIS-NN (TFLM wrapper + the CMSIS-NN functions it dispatches to): point, low,
# high. Convolutions carry several variants (1x1 fast, 1xN, generic with im2col, 3x3 depthwise, ...).
KERNEL_BYTES = {
    "CONV_2D": (6_000, 3_000, 10_000),
    "DEPTHWISE_CONV_2D": (6_000, 3_000, 10_000),
    "FULLY_CONNECTED": (2_500, 1_200, 4_500),
    "AVERAGE_POOL_2D": (2_000, 1_000, 3_500),
    "MAX_POOL_2D": (2_000, 1_000, 3_500),
    "SOFTMAX": (2_500, 1_200, 4_500),
    "ADD": (2_500, 1_200, 4_500),
    "MUL": (2_000, 1_000, 3_500),
    "RESHAPE": (400, 200, 800),
    "QUANTIZE": (1_500, 800, 3_000),
    "DEQUANTIZE": (1_500, 800, 3_000),
}
UNKNOWN_KERNEL_BYTES = (3_000, 1_000, 8_000)  # any other op: wide, because nothing was looked up for it


@dataclass(frozen=True, kw_only=True)
class RuntimeCode:
    """Estimated TFLM code bytes for a model's ops: point and [low, high]."""

    bytes: int
    range_bytes: tuple[int, int]
    published: str
    estimated: str


def runtime_code(op_names: tuple[str, ...]) -> RuntimeCode:
    """The TFLM framework plus one kernel per distinct op (each kernel is linked once)."""
    parts = [CORE_BYTES] + [KERNEL_BYTES.get(name, UNKNOWN_KERNEL_BYTES) for name in op_names]
    return RuntimeCode(
        bytes=sum(part[0] for part in parts),
        range_bytes=(sum(part[1] for part in parts), sum(part[2] for part in parts)),
        published="TFLM core 9,732 B .text on Cortex-M3 (memory_footprint README); 16 KB core (tensorflow.org)",
        estimated=f"kernels {', '.join(op_names)}: estimated, no published per-kernel sizes",
    )
