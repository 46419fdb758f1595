"""`report(tflite, board) -> Report`: does an int8 .tflite fit a Cortex-M board, and how fast does it run?

Works on any .tflite, without TensorFlow: the graph is read with tflite-micro's schema (graph), the arena is
measured in the pip TFLM interpreter in a child process and corrected to 32 bits (arena), runtime code is added
to the model bytes (flash), and latency comes from a per-operator cycle model fitted on published boards
(latency). How each figure is made, and what it does not count, is in tinykd/report/README.md.

This module is also the public `tinykd.report(model, boards=None)`: calling it calls `report_model`.
"""

from __future__ import annotations

import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

from tinykd.boards import Board, get_board, load_boards
from tinykd.errors import ConfigError, ModelError
from tinykd.report import arena as arena_module
from tinykd.report import flash, graph, latency

# TFLM objects outside the arena on a 32-bit MCU: MicroInterpreter with its context and graph (~300 B), the
# MicroMutableOpResolver<N> (per op a 28-byte TFLMRegistration and a 4-byte code), rounded up generously.
RUNTIME_STATE_BYTES = 1024
RUNTIME_STATE_BYTES_PER_OP = 48
RAM_COUNTS = ("arena (32-bit upper bound, including CMSIS-NN scratch; input and output tensors live in it) + TFLM "
              "objects outside the arena (interpreter, op resolver); not counted: stack, heap, your own buffers")
FLASH_COUNTS = "model + TFLM runtime code; not counted: startup, HAL, C library, application"


@dataclass(frozen=True, kw_only=True)
class LayerReport:
    """One operator on one board."""

    index: int
    op: str
    version: int
    output_shape: tuple[int, ...]
    macs: int
    cycles: int
    latency_ms: float


@dataclass(frozen=True, kw_only=True)
class Report:
    """Flash, RAM and latency of one model on one board, and whether it fits (bytes, milliseconds)."""

    board: str
    mcu: str
    core: str
    clock_mhz: float
    kernels: str
    precision: str
    macs: int
    model_bytes: int
    runtime_code_bytes: int
    runtime_code_range_bytes: tuple[int, int]
    flash_bytes: int
    flash_range_bytes: tuple[int, int]
    flash_counts: str
    flash_estimated: str
    arena_bytes: int
    arena_nonpersistent_bytes: int
    arena_persistent_bytes: int
    arena_host_bytes: int
    arena_32bit_correction_bytes: int
    kernel_scratch_bytes: int
    runtime_state_bytes: int
    ram_bytes: int
    ram_counts: str
    latency_ms: float
    latency_range_ms: tuple[float, float]
    confidence: str
    latency_basis: str
    board_flash_bytes: int
    board_arena_ram_bytes: int
    board_ram_bytes: int
    fits: bool
    flash_headroom_bytes: int
    ram_headroom_bytes: int
    warnings: tuple[str, ...]
    layers: tuple[LayerReport, ...]

    def as_dict(self) -> dict:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What does not depend on the board: the graph and the measured arena."""

    graph: graph.Graph
    arena: arena_module.Arena
    warnings: tuple[str, ...]


def report(tflite: bytes, board: Board | str, fit: latency.Fit | None = None, source: str = "model") -> Report:
    """Flash, RAM, latency and fit of `tflite` on one board (an id from `tinykd boards`, or a Board).

    Raises:
        ModelError: the file is not a TFLite model, or TFLite Micro cannot run it (names the op).
        ConfigError: the board id is unknown.
    """
    board = get_board(board) if isinstance(board, str) else board
    return for_board(analyze(tflite, source), board, fit)


def reports(tflite: bytes, boards: list[Board], fit: latency.Fit | None = None,
            source: str = "model") -> tuple[Report, ...]:
    """`report` for several boards; the model is parsed and measured once."""
    analysis = analyze(tflite, source)
    return tuple(for_board(analysis, board, fit) for board in boards)


def analyze(tflite: bytes, source: str = "model", worker: arena_module.Worker | None = None) -> Analysis:
    """Parse and check the model, then measure its arena in TFLM (in a child process).

    Raises:
        ModelError: as for `report`.
    """
    model = graph.read(tflite, source)
    hybrid = graph.hybrid_layers(model)
    if hybrid:
        first = hybrid[0]
        raise ModelError(f"{source}: {first.op} (operator {first.index}) takes float32 input with {first.weight_dtype} "
                         "weights: a hybrid (dynamic-range quantized) model, which TFLite Micro does not support; "
                         "convert with full-integer quantization (a representative dataset and int8 input/output)")
    warnings = []
    if model.precision == "float32":
        warnings.append("float32 model: CMSIS-NN int8 kernels do not apply; TFLM runs its float reference kernels, "
                        "so latency is far higher than for the int8 model")
    if model.subgraphs > 1:
        warnings.append(f"{model.subgraphs} subgraphs: layers, MACs and latency count subgraph 0 only")
    measured = (worker.measure(tflite, source, model.subgraphs) if worker is not None
                else arena_module.measure(tflite, source, model.subgraphs))
    return Analysis(graph=model, arena=measured, warnings=tuple(warnings))


def for_board(analysis: Analysis, board: Board, fit: latency.Fit | None = None) -> Report:
    """Combine a model's analysis with one board."""
    model, measured = analysis.graph, analysis.arena
    kernels = board.kernels if model.precision == "int8" else f"reference ({model.precision})"
    cmsis = kernels == "cmsis-nn"
    scratch = arena_module.kernel_scratch_bytes(model, board.simd) if cmsis else 0
    persistent_extra = arena_module.kernel_persistent_bytes(model, board.simd) if cmsis else 0
    arena_bytes = measured.bytes_32bit + scratch + persistent_extra
    state = RUNTIME_STATE_BYTES + RUNTIME_STATE_BYTES_PER_OP * len(model.op_names)
    code = flash.runtime_code(model.op_names)
    flash_bytes = model.model_bytes + code.bytes
    flash_range = (model.model_bytes + code.range_bytes[0], model.model_bytes + code.range_bytes[1])
    ram_bytes = arena_bytes + state
    if fit is None:
        from tinykd.report.coefficients import FIT as fit
    timing = latency.estimate(model, board, fit)
    clock_khz = board.clock_mhz * 1e3
    return Report(
        board=board.id, mcu=board.mcu, core=board.core, clock_mhz=board.clock_mhz, kernels=kernels,
        precision=model.precision, macs=model.macs, model_bytes=model.model_bytes,
        runtime_code_bytes=code.bytes, runtime_code_range_bytes=code.range_bytes, flash_bytes=flash_bytes,
        flash_range_bytes=flash_range, flash_counts=FLASH_COUNTS,
        flash_estimated=f"{code.published}; {code.estimated}",
        arena_bytes=arena_bytes, arena_nonpersistent_bytes=measured.host_nonpersistent_bytes + scratch,
        arena_persistent_bytes=measured.persistent_32bit_bytes + persistent_extra,
        arena_host_bytes=measured.host_bytes, arena_32bit_correction_bytes=measured.correction_bytes,
        kernel_scratch_bytes=scratch, runtime_state_bytes=state, ram_bytes=ram_bytes, ram_counts=RAM_COUNTS,
        latency_ms=timing.latency_ms, latency_range_ms=timing.range_ms, confidence=timing.confidence,
        latency_basis=timing.basis, board_flash_bytes=board.flash_bytes,
        board_arena_ram_bytes=board.arena_ram_bytes, board_ram_bytes=board.ram_bytes,
        # Fitting is judged on the high end of the runtime-code estimate and the arena's upper bound.
        fits=(flash_range[1] <= board.flash_bytes and arena_bytes <= board.arena_ram_bytes
              and ram_bytes <= board.ram_bytes),
        flash_headroom_bytes=board.flash_bytes - flash_bytes,
        ram_headroom_bytes=min(board.arena_ram_bytes - arena_bytes, board.ram_bytes - ram_bytes),
        warnings=analysis.warnings,
        layers=tuple(LayerReport(index=layer.index, op=layer.op, version=layer.version,
                                 output_shape=layer.output_shape, macs=layer.macs, cycles=round(cycles),
                                 latency_ms=cycles / clock_khz)
                     for layer, cycles in zip(model.layers, timing.layer_cycles)),
    )


def read_model(path: Path) -> bytes:
    """The bytes of a model file, with a clear error when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model file ({error.strerror})") from None


def report_model(model: bytes | str | Path, boards: str | Board | list | tuple | None = None, *,
                 fit: latency.Fit | None = None) -> Report | list[Report]:
    """`tinykd.report`: flash, RAM, latency and fit of a .tflite on Cortex-M boards, without TensorFlow.

    Args:
        model: a .tflite file's path, or its bytes.
        boards: one board (an id from `tinykd boards`, or a Board) gives one Report; a list of them gives a list
            in that order; None (the default) gives a list over every board `tinykd boards` lists.
        fit: latency coefficients (`tinykd report --calibrate`); None: the shipped fit.

    Raises:
        ModelError: the file cannot be read, is not a TFLite model, or TFLite Micro cannot run it.
        ConfigError: a board id is unknown (names the known ones).
    """
    tflite, source = model_and_source(model)
    if isinstance(boards, (str, Board)):
        return reports(tflite, [resolve_board(boards)], fit, source)[0]
    chosen = list(load_boards().values()) if boards is None else [resolve_board(board) for board in boards]
    return list(reports(tflite, chosen, fit, source))


def model_and_source(model: bytes | str | Path) -> tuple[bytes, str]:
    """The .tflite bytes of `model` (a path or the bytes themselves) and the name errors give it."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "model"
    if isinstance(model, (str, Path)):
        return read_model(Path(model)), str(model)
    raise ModelError(f"model: expected a .tflite path or its bytes, got {type(model).__name__}")


def resolve_board(board: str | Board, key: str = "boards") -> Board:
    """A Board given as itself or by id; an unknown id is a ConfigError naming `key` and the known ids."""
    if isinstance(board, Board):
        return board
    known = load_boards()
    if board not in known:
        raise ConfigError(f"{key}: unknown board {board!r}; known boards: {', '.join(sorted(known))} "
                          "(or pass a tinykd.boards.Board of your own)")
    return known[board]


class _CallableModule(types.ModuleType):
    # `tinykd.report` is this module (the stage's home) and the public verb at once: a plain function of that
    # name in tinykd/__init__.py would be replaced by the module the first time anything imports it.
    def __call__(self, model: bytes | str | Path, boards: str | Board | list | tuple | None = None, *,
                 fit: latency.Fit | None = None) -> Report | list[Report]:
        return report_model(model, boards, fit=fit)

    __call__.__doc__ = report_model.__doc__


sys.modules[__name__].__class__ = _CallableModule
