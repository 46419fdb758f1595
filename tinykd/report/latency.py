"""Latency: a per-operator cycle model for TFLite Micro on Cortex-M, fitted on published measurements.

cycles(layer) = sum_j c_j * x_j over the features x = (1x1-conv MACs, other conv MACs, depthwise MACs, fully
connected MACs, outputs of those ops, elements written by every other op (times its window), 1 per op for the
interpreter). The coefficients c are fitted per core family in log space (relative errors) with a ridge pull
towards an instruction-set prior, because four models per core cannot pin down seven numbers on their own.
The fit, its leave-one-out errors and the derivation for cores without data are in tinykd/report/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from tinykd.boards import Board
from tinykd.errors import ConfigError
from tinykd.report.graph import Graph, Layer

FEATURES = ("conv_1x1_macs", "conv_macs", "depthwise_macs", "fc_macs", "outputs", "elements", "ops")
# Cycles per feature unit before fitting: CMSIS-NN's DSP path (SMLAD, 2 MACs per instruction plus loads and
# requantization) and its Helium path (16 int8 lanes, with weight streaming dominating fully connected layers).
PRIORS = {"dsp": (3.5, 4.0, 5.0, 3.5, 15.0, 8.0, 1500.0), "helium": (0.5, 0.4, 1.0, 1.0, 6.0, 3.0, 1000.0)}
RIDGE = 0.3  # weight of the pull towards the prior, per log-coefficient
_FREE_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE"}  # in-place or negligible in TFLM
_RANGE_FLOOR = 0.10  # no range is narrower than +-10%, however well four models happen to fit


@dataclass(frozen=True, kw_only=True)
class CoreModel:
    """How a core's coefficients follow from a fitted family: basis core's coefficients times `factor`."""

    basis: str
    factor: float
    factor_range: tuple[float, float]
    confidence: str  # "high": per-model data on this core; "medium": whole-network data; "low": derived
    note: str


# Cores without per-model data, derived from what they share with a calibrated core (README: "Derived cores").
DERIVED = {
    "cortex-m4": CoreModel(basis="cortex-m33", factor=1.4, factor_range=(1.0, 2.2), confidence="low",
                           note="same DSP/SIMD instructions as the M33; published only for TFLM 2.3.1, which was "
                                "1.8-2.2x slower than the M33 fit (upper bound of the range)"),
    "cortex-m3": CoreModel(basis="cortex-m33", factor=2.0, factor_range=(1.4, 3.0), confidence="low",
                           note="no DSP/SIMD instructions: CMSIS-NN runs its plain C path, one MAC per multiply"),
    "cortex-m0plus": CoreModel(basis="cortex-m33", factor=4.0, factor_range=(2.5, 6.5), confidence="low",
                               note="ARMv6-M: no DSP, no multiply-accumulate, 16-bit Thumb only; code runs from "
                                    "cached XIP flash on the RP2040"),
    "cortex-m55": CoreModel(basis="cortex-m85", factor=1.3, factor_range=(1.0, 2.0), confidence="low",
                            note="Helium like the M85, with a simpler scalar pipeline and no branch prediction"),
}
SOFT_FLOAT_FACTOR = 10.0  # float reference kernels without an FPU: every multiply-add is a library call
REFERENCE_RANGE = (0.5, 2.0)  # the reference-kernel factor rests on one pair of measurements


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One published (or user-measured) latency; `features` is None when the model file is not public."""

    name: str
    core: str
    clock_mhz: float
    latency_ms: float
    macs: int
    kernels: str = "cmsis-nn"
    release: str = "current"
    features: tuple[float, ...] | None = None
    board: str = ""


@dataclass(frozen=True, kw_only=True)
class Residual:
    """A measured latency against the fit that saw it (in-sample) and the fit that did not (leave-one-out)."""

    name: str
    measured_ms: float
    fitted_ms: float
    loo_ms: float

    @property
    def fitted_error(self) -> float:
        return self.fitted_ms / self.measured_ms - 1

    @property
    def loo_error(self) -> float:
        return self.loo_ms / self.measured_ms - 1


@dataclass(frozen=True, kw_only=True)
class Fit:
    """Fitted coefficients per core family, how every other core follows, and the errors behind the ranges."""

    coefficients: dict[str, tuple[float, ...]]
    cores: dict[str, CoreModel]
    reference_factor: float
    residuals: dict[str, tuple[Residual, ...]] = field(default_factory=dict)
    boards: dict[str, CoreModel] = field(default_factory=dict)  # from the user's own measurements


@dataclass(frozen=True, kw_only=True)
class Latency:
    """The estimate for one model on one core and clock."""

    latency_ms: float
    range_ms: tuple[float, float]
    confidence: str
    basis: str
    layer_cycles: tuple[float, ...]


def features(layer: Layer) -> tuple[float, ...]:
    """The cycle-model features of one layer, in the order of FEATURES."""
    conv = layer.op in ("CONV_2D", "TRANSPOSE_CONV")
    pointwise = conv and layer.window_elements == 1
    weighted = layer.macs > 0
    elements = 0 if weighted or layer.op in _FREE_OPS else layer.output_elements * layer.window_elements
    return (layer.macs if pointwise else 0, layer.macs if conv and not pointwise else 0,
            layer.macs if layer.op == "DEPTHWISE_CONV_2D" else 0,
            layer.macs if layer.op in ("FULLY_CONNECTED", "BATCH_MATMUL") else 0,
            layer.output_elements if weighted else 0, elements, 1)


def model_features(graph: Graph) -> tuple[float, ...]:
    """Features summed over every layer of a model."""
    return tuple(float(sum(column)) for column in zip(*(features(layer) for layer in graph.layers)))


def fit(measurements: tuple[Measurement, ...]) -> Fit:
    """Fit the cycle model on published measurements (calibration.load_calibration) and record leave-one-out errors.

    Cores with per-model rows (current CMSIS-NN) get their own coefficients; whole-network rows of another core
    give it a factor on the M33 family; a reference-kernel row next to a CMSIS-NN row of the same model gives
    the reference-kernel factor.
    """
    direct = {m.core for m in measurements if m.features is not None and _usable(m)}
    if "cortex-m33" not in direct:
        raise ConfigError("calibration: no per-model CMSIS-NN rows for cortex-m33; the fit needs them as its basis")
    coefficients, residuals, cores = {}, {}, dict(DERIVED)
    for core in sorted(direct):
        rows = tuple(m for m in measurements if m.core == core and m.features is not None and _usable(m))
        coefficients[core] = _fit_family(rows, PRIORS[_isa(core)])
        residuals[core] = tuple(_residual(m, coefficients[core], _fit_family(tuple(r for r in rows if r is not m),
                                                                             PRIORS[_isa(core)]))
                                for m in rows)
        low, high = _error_range(residuals[core])
        cores[core] = CoreModel(basis=core, factor=1.0, factor_range=(low, high), confidence="high",
                                note=f"fitted on {len(rows)} published models on this core")
    mix = _typical_mix(measurements)
    for core in sorted({m.core for m in measurements if m.features is None and _usable(m)} - direct):
        rows = tuple(m for m in measurements if m.core == core and m.features is None and _usable(m))
        basis_cycles_per_mac = float(np.dot(coefficients["cortex-m33"], mix))
        ratios = [_cycles_per_mac(m) / basis_cycles_per_mac for m in rows]
        factor = _geomean(ratios)
        residuals[core] = tuple(
            Residual(name=m.name, measured_ms=m.latency_ms, fitted_ms=m.latency_ms * factor / ratio,
                     loo_ms=m.latency_ms * _geomean(ratios[:i] + ratios[i + 1:]) / ratio)
            for i, (m, ratio) in enumerate(zip(rows, ratios)))
        low, high = _error_range(residuals[core], floor=0.25)
        cores[core] = CoreModel(basis="cortex-m33", factor=factor, factor_range=(factor * low, factor * high),
                                confidence="medium",
                                note=f"{len(rows)} whole-network measurements on this core (model files not "
                                     "public), applied to the M33 per-operator shape")
    return Fit(coefficients=coefficients, cores=cores, reference_factor=_reference_factor(measurements),
               residuals=residuals)


def estimate(graph: Graph, board: Board, fit_: Fit) -> Latency:
    """Latency of one inference on `board`: per-layer cycles from the fitted model, a range and a confidence.

    Raises:
        ConfigError: the board's core has neither data nor a derivation.
    """
    model = fit_.boards.get(board.id) or fit_.cores.get(board.core)
    if model is None:
        raise ConfigError(f"no latency model for core {board.core!r}; known cores: {', '.join(sorted(fit_.cores))}")
    base = np.asarray(fit_.coefficients[model.basis]) * model.factor
    factor, basis, confidence = 1.0, f"TFLM + CMSIS-NN; {model.note}", model.confidence
    if board.kernels == "reference" or graph.precision != "int8":
        factor = fit_.reference_factor * (1.0 if board.fpu or graph.precision == "int8" else SOFT_FLOAT_FACTOR)
        basis = (f"TFLM reference kernels ({fit_.reference_factor:.1f}x CMSIS-NN, measured on one Cortex-M7 "
                 f"model{'' if board.fpu or graph.precision == 'int8' else '; software floating point'}); "
                 f"{model.note}")
        confidence = "low"
    cycles = tuple(float(np.dot(base, features(layer))) * factor for layer in graph.layers)
    milliseconds = sum(cycles) / (board.clock_mhz * 1e3)
    low, high = model.factor_range[0] / model.factor, model.factor_range[1] / model.factor
    if factor != 1.0:  # one measured pair behind the reference-kernel factor
        low, high = low * REFERENCE_RANGE[0], high * REFERENCE_RANGE[1]
    return Latency(latency_ms=milliseconds, range_ms=(milliseconds * low, milliseconds * high),
                   confidence=confidence, basis=basis, layer_cycles=cycles)


def calibrate(fit_: Fit, measurements: tuple[Measurement, ...]) -> Fit:
    """Refit for the user's own boards: one factor per board on the fitted per-operator shape.

    The factor is the geometric mean of measured over predicted latency; its range comes from leave-one-out
    errors (at least +-20% with a single measurement).
    """
    boards = dict(fit_.boards)
    residuals = dict(fit_.residuals)
    for board in sorted({m.board for m in measurements}):
        rows = tuple(m for m in measurements if m.board == board)
        model = fit_.cores.get(rows[0].core)
        if model is None:
            raise ConfigError(f"calibration: board {board}: no latency model for core {rows[0].core!r}")
        base = np.asarray(fit_.coefficients[model.basis]) * model.factor
        predicted = [float(np.dot(base, m.features)) / (m.clock_mhz * 1e3) for m in rows]
        ratios = [m.latency_ms / p for m, p in zip(rows, predicted)]
        factor = _geomean(ratios)
        residuals[board] = tuple(
            Residual(name=m.name, measured_ms=m.latency_ms, fitted_ms=p * factor,
                     loo_ms=p * (_geomean(ratios[:i] + ratios[i + 1:]) if len(rows) > 1 else factor))
            for i, (m, p) in enumerate(zip(rows, predicted)))
        low, high = _error_range(residuals[board], floor=0.20) if len(rows) > 1 else (0.8, 1.2)
        total = model.factor * factor
        boards[board] = CoreModel(basis=model.basis, factor=total, factor_range=(total * low, total * high),
                                  confidence="calibrated",
                                  note=f"calibrated on {len(rows)} of your measurements on {board}")
    return replace(fit_, boards=boards, residuals=residuals)


def _usable(measurement: Measurement) -> bool:
    return measurement.kernels == "cmsis-nn" and measurement.release == "current"


def _isa(core: str) -> str:
    return "helium" if core in ("cortex-m55", "cortex-m85") else "dsp"


def _fit_family(rows: tuple[Measurement, ...], prior: tuple[float, ...]) -> tuple[float, ...]:
    """Levenberg-Marquardt on log(predicted / measured), plus RIDGE * log(c / prior)^2 per coefficient."""
    prior_array = np.asarray(prior)
    x = np.asarray([m.features for m in rows], dtype=float)
    target = np.log([m.latency_ms * m.clock_mhz * 1e3 for m in rows])
    theta = np.zeros(len(prior))
    damping = 1e-3
    for _ in range(200):
        contributions = x * (prior_array * np.exp(theta))
        predicted = contributions.sum(axis=1)
        residual = np.concatenate([np.log(predicted) - target, math.sqrt(RIDGE) * theta])
        jacobian = np.vstack([contributions / predicted[:, None], math.sqrt(RIDGE) * np.eye(len(theta))])
        step = np.linalg.solve(jacobian.T @ jacobian + damping * np.eye(len(theta)), -jacobian.T @ residual)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return tuple(float(c) for c in prior_array * np.exp(theta))


def _residual(measurement: Measurement, fitted: tuple[float, ...], held_out: tuple[float, ...]) -> Residual:
    def milliseconds(coefficients: tuple[float, ...]) -> float:
        return float(np.dot(coefficients, measurement.features)) / (measurement.clock_mhz * 1e3)

    return Residual(name=measurement.name, measured_ms=measurement.latency_ms, fitted_ms=milliseconds(fitted),
                    loo_ms=milliseconds(held_out))


def _error_range(residuals: tuple[Residual, ...], floor: float = _RANGE_FLOOR) -> tuple[float, float]:
    """Multipliers on a prediction that cover every leave-one-out miss: measured / predicted, widest both ways."""
    ratios = [1 / (1 + r.loo_error) for r in residuals]
    return min(min(ratios), 1 - floor), max(max(ratios), 1 + floor)


def _typical_mix(measurements: tuple[Measurement, ...]) -> np.ndarray:
    # Whole-network rows (MCUNet, ProxylessNAS) are depthwise-separable networks; the public models closest to
    # them are the ones with depthwise layers (KWS, VWW). Their per-MAC feature mix stands in for the missing files.
    rows = [np.asarray(m.features) / m.macs for m in measurements
            if m.features is not None and m.core == "cortex-m33" and m.features[2] > 0]
    return np.mean(rows, axis=0)


def _cycles_per_mac(measurement: Measurement) -> float:
    return measurement.latency_ms * measurement.clock_mhz * 1e3 / measurement.macs


def _reference_factor(measurements: tuple[Measurement, ...]) -> float:
    pairs = [(r, c) for r in measurements for c in measurements
             if r.kernels == "reference" and c.kernels == "cmsis-nn" and c.release == "current"
             and r.core == c.core and r.macs == c.macs and r.clock_mhz == c.clock_mhz]
    if not pairs:
        raise ConfigError("calibration: no reference-kernel row next to a CMSIS-NN row of the same model")
    return _geomean([r.latency_ms / c.latency_ms for r, c in pairs])


def _geomean(values: list[float]) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))
