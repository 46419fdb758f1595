"""tinykd.report.latency: the fit on published latencies, its leave-one-out errors, and user calibration."""

from pathlib import Path

import pytest

from tinykd.boards import load_boards
from tinykd.errors import ConfigError
from tinykd.report import calibration, graph, latency
from tinykd.report.coefficients import FIT

CALIBRATION = Path(__file__).resolve().parents[2] / "shared/reference/mcu_calibration.csv"


@pytest.fixture(scope="module")
def measurements():
    return calibration.load_calibration(CALIBRATION)


@pytest.fixture(scope="module")
def refit(measurements):
    return latency.fit(measurements)


def test_shipped_coefficients_are_the_fit_of_the_published_data(refit):
    assert refit.coefficients.keys() == FIT.coefficients.keys() == {"cortex-m33", "cortex-m85"}
    for core, coefficients in FIT.coefficients.items():
        assert refit.coefficients[core] == pytest.approx(coefficients, rel=1e-6)
    assert refit.cores["cortex-m7"].factor == pytest.approx(FIT.cores["cortex-m7"].factor, rel=1e-6)
    assert refit.reference_factor == pytest.approx(587 / 53)


def test_in_sample_and_leave_one_out_errors(refit):
    # The documented bounds (tinykd/report/README.md): fail loudly if a change to the model makes them worse.
    bounds = {"cortex-m33": (0.08, 0.12), "cortex-m85": (0.15, 0.38), "cortex-m7": (0.08, 0.11)}
    for core, (in_sample, held_out) in bounds.items():
        residuals = refit.residuals[core]
        assert len(residuals) == 4
        assert max(abs(r.fitted_error) for r in residuals) < in_sample
        assert max(abs(r.loo_error) for r in residuals) < held_out


def test_published_latencies_fall_in_the_reported_range(shared_models, measurements):
    boards = {"cortex-m33": "ek-ra6m4", "cortex-m85": "ek-ra8d1"}
    for measurement in measurements:
        if measurement.core not in boards or measurement.features is None:
            continue
        name = {"KWS": "kws_ref_model", "VWW": "vww_96_int8", "IC": "pretrainedResnet_quant", "AD": "ad01_int8"}
        model = graph.read((shared_models / f"{name[measurement.name.split('-')[1]]}.tflite").read_bytes())
        estimate = latency.estimate(model, load_boards()[boards[measurement.core]], FIT)
        low, high = estimate.range_ms
        assert low <= measurement.latency_ms <= high, measurement.name
        clock_mhz = load_boards()[boards[measurement.core]].clock_mhz
        assert sum(estimate.layer_cycles) / (clock_mhz * 1e3) == pytest.approx(estimate.latency_ms)


def test_cores_without_data_are_derived_with_low_confidence(shared_models):
    model = graph.read((shared_models / "kws_ref_model.tflite").read_bytes())
    boards = load_boards()
    m33 = latency.estimate(model, boards["ek-ra6m4"], FIT)
    pico = latency.estimate(model, boards["rpi-pico"], FIT)
    assert m33.confidence == "high" and pico.confidence == "low"
    # Same per-operator shape, scaled by the M0+ factor and the clocks.
    assert pico.latency_ms == pytest.approx(m33.latency_ms * 4.0 * 200 / 133)
    assert pico.range_ms[1] / pico.range_ms[0] > m33.range_ms[1] / m33.range_ms[0]


def test_reference_kernels_and_float_models_are_slower_and_low_confidence(shared_models):
    boards = load_boards()
    float_model = graph.read((shared_models / "pretrainedResnet.tflite").read_bytes())
    int8_model = graph.read((shared_models / "pretrainedResnet_quant.tflite").read_bytes())
    int8 = latency.estimate(int8_model, boards["ek-ra6m4"], FIT)
    floating = latency.estimate(float_model, boards["ek-ra6m4"], FIT)
    soft_float = latency.estimate(float_model, boards["rpi-pico"], FIT)
    assert floating.latency_ms == pytest.approx(int8.latency_ms * FIT.reference_factor)
    assert floating.confidence == "low" and "reference kernels" in floating.basis
    assert "software floating point" in soft_float.basis


def test_calibrate_refits_the_users_board(shared_models, tmp_path):
    (tmp_path / "kws.tflite").write_bytes((shared_models / "kws_ref_model.tflite").read_bytes())
    (tmp_path / "vww.tflite").write_bytes((shared_models / "vww_96_int8.tflite").read_bytes())
    # The user's Nano 33 BLE runs twice as slow as tinykd's M4 prediction.
    boards = load_boards()
    predicted = {name: latency.estimate(graph.read((tmp_path / name).read_bytes()),
                                        boards["arduino-nano-33-ble"], FIT).latency_ms
                 for name in ("kws.tflite", "vww.tflite")}
    csv = tmp_path / "measured.csv"
    csv.write_text("model,board,latency_ms\n" + "".join(f"{name},arduino-nano-33-ble,{2 * ms}\n"
                                                       for name, ms in predicted.items()))
    calibrated = latency.calibrate(FIT, calibration.load_measurements(csv, boards))
    after = latency.estimate(graph.read((tmp_path / "kws.tflite").read_bytes()), boards["arduino-nano-33-ble"],
                             calibrated)
    assert after.latency_ms == pytest.approx(2 * predicted["kws.tflite"], rel=1e-6)
    assert after.confidence == "calibrated"
    untouched = latency.estimate(graph.read((tmp_path / "kws.tflite").read_bytes()), boards["nucleo-l4r5zi"],
                                 calibrated)
    assert untouched.confidence == "low"


def test_calibration_csv_errors_name_the_problem(tmp_path):
    csv = tmp_path / "measured.csv"
    csv.write_text("model,board,latency\nx.tflite,ek-ra6m4,3\n")
    with pytest.raises(ConfigError, match="missing column"):
        calibration.load_measurements(csv, load_boards())
    csv.write_text("model,board,latency_ms\nx.tflite,esp32,3\n")
    with pytest.raises(ConfigError, match="line 2: unknown board 'esp32'"):
        calibration.load_measurements(csv, load_boards())
