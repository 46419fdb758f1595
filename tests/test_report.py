"""`report()` and `tinykd report` on the real MLPerf Tiny models, with the real pip TFLM interpreter."""

import json
import subprocess
import sys

import pytest

from tinykd.boards import load_boards
from tinykd.report import report, reports
from tinykd.report.render import markdown, table

# Peak live activations of each model (mcu_memory_facts.md): the non-persistent arena can never be smaller.
PEAK_ACTIVATIONS = {"kws_ref_model.tflite": 16_000, "vww_96_int8.tflite": 55_296,
                    "pretrainedResnet_quant.tflite": 49_152, "ad01_int8.tflite": 768}
JSON_KEYS = {"board", "core", "clock_mhz", "macs", "model_bytes", "runtime_code_bytes", "flash_bytes", "arena_bytes",
             "ram_bytes", "ram_counts", "latency_ms", "latency_range_ms", "confidence", "fits",
             "flash_headroom_bytes", "ram_headroom_bytes", "kernels", "layers", "arena_nonpersistent_bytes",
             "arena_persistent_bytes"}
LAYER_KEYS = {"op", "version", "output_shape", "macs", "cycles", "latency_ms"}


def tinykd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinykd", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("file_name", sorted(PEAK_ACTIVATIONS))
def test_report_adds_up_and_never_undercounts_activations(shared_models, file_name):
    tflite = (shared_models / file_name).read_bytes()
    result = report(tflite, "ek-ra6m4", source=file_name)
    assert result.model_bytes == len(tflite)
    assert result.flash_bytes == result.model_bytes + result.runtime_code_bytes
    assert result.flash_range_bytes[0] < result.flash_bytes < result.flash_range_bytes[1]
    assert result.ram_bytes == result.arena_bytes + result.runtime_state_bytes
    assert result.arena_bytes == result.arena_nonpersistent_bytes + result.arena_persistent_bytes
    assert result.arena_nonpersistent_bytes >= PEAK_ACTIVATIONS[file_name]
    assert result.arena_bytes == (result.arena_host_bytes - result.arena_32bit_correction_bytes
                                  + result.kernel_scratch_bytes)
    assert result.fits and result.flash_headroom_bytes == 1_048_576 - result.flash_bytes
    assert sum(layer.latency_ms for layer in result.layers) == pytest.approx(result.latency_ms)
    assert sum(layer.macs for layer in result.layers) == result.macs
    low, high = result.latency_range_ms
    assert low < result.latency_ms < high and result.confidence == "high"


def test_all_boards_share_one_measurement_and_differ_where_they_should(shared_models):
    tflite = (shared_models / "kws_ref_model.tflite").read_bytes()
    results = reports(tflite, list(load_boards().values()))
    assert [r.board for r in results] == list(load_boards())
    assert len({r.arena_host_bytes for r in results}) == 1
    by_board = {r.board: r for r in results}
    assert by_board["ek-ra8d1"].arena_bytes > by_board["ek-ra6m4"].arena_bytes  # Helium kernel sums and scratch
    assert by_board["ek-ra8d1"].latency_ms < by_board["nucleo-h743zi2"].latency_ms < by_board["ek-ra6m4"].latency_ms
    assert by_board["rpi-pico"].confidence == "low" and by_board["teensy-41"].confidence == "medium"
    json.dumps([r.as_dict() for r in results])
    assert max(len(line) for line in table(results, "kws").splitlines()) <= 100
    assert markdown(results, "kws").count("\n| ") == len(results) + 1


def test_a_board_too_small_does_not_fit(shared_models, tmp_path):
    boards_file = tmp_path / "mine.yaml"
    boards_file.write_text("tiny-m0:\n  mcu: STM32G030\n  core: cortex-m0plus\n  clock_mhz: 64\n"
                           "  flash_bytes: 65536\n  ram_bytes: 8192\n  arena_ram_bytes: 8192\n  simd: none\n"
                           "  fpu: false\n  source: ST DS12991\n")
    board = load_boards(boards_file)["tiny-m0"]
    result = report((shared_models / "vww_96_int8.tflite").read_bytes(), board)
    assert not result.fits
    assert result.flash_headroom_bytes < 0 and result.ram_headroom_bytes < 0


def test_cli_json_has_one_object_per_board_with_every_field(shared_models):
    done = tinykd("report", shared_models / "vww_96_int8.tflite", "--board", "ek-ra6m4", "--board", "ek-ra8d1",
                  "--format", "json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["board"] for r in results] == ["ek-ra6m4", "ek-ra8d1"]
    for result in results:
        assert JSON_KEYS <= result.keys()
        assert result["macs"] == 7_489_664 and result["kernels"] == "cmsis-nn"
        assert len(result["layers"]) == 31 and LAYER_KEYS <= result["layers"][0].keys()


def test_cli_table_markdown_and_plots(shared_models, tmp_path):
    done = tinykd("report", shared_models / "ad01_int8.tflite", "--format", "md", "--plot", tmp_path / "plots")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("### `ad01_int8.tflite` on 10 boards")
    for name in ("latency_per_layer.png", "memory_per_board.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = tinykd("report", shared_models / "ad01_int8.tflite", "--board", "rpi-pico")
    assert done.returncode == 0 and "FULLY_CONNECTED" in done.stdout and "runtime code" in done.stdout


def test_cli_every_says_per_board_whether_a_streaming_model_keeps_up(shared_models):
    model = shared_models / "kws_ref_model.tflite"
    done = tinykd("report", model, "--board", "nrf5340dk", "--board", "nucleo-l4r5zi", "--every", "100",
                  "--format", "json")
    assert done.returncode == 0, done.stderr
    for result in json.loads(done.stdout):
        low, high = result["latency_range_ms"]
        listening = result["listening"]
        assert listening["stride_ms"] == 100 and listening["latency_range_ms"] == [round(low, 1), round(high, 1)]
        assert listening["keeps_up"] == (high <= 100) and listening["fits_with_room"] == (high <= 80)
        shortest = listening["shortest_stride_ms"]
        assert shortest % 20 == 0 and high <= 0.8 * shortest and high > 0.8 * (shortest - 20)
    assert not any(result["listening"]["fits_with_room"] for result in json.loads(done.stdout))
    slowest = max(json.loads(done.stdout), key=lambda result: result["latency_range_ms"][1])
    enough = str(slowest["listening"]["shortest_stride_ms"])
    done = tinykd("report", model, "--board", slowest["board"], "--every", enough)
    assert done.returncode == 0, done.stderr
    assert "leaving the rest for the front-end" in done.stdout.replace("\n    ", " ")
    done = tinykd("report", model, "--board", "nrf5340dk", "--every", "40", "--format", "md")
    assert "it **does not keep up**. Set --every to at least" in done.stdout
    assert "Listening" not in tinykd("report", model, "--board", "nrf5340dk").stdout
    done = tinykd("report", model, "--board", "nrf5340dk", "--every", "100", "--frame-stride-ms", "32", "--format",
                  "json")
    assert json.loads(done.stdout)[0]["listening"]["shortest_stride_ms"] % 32 == 0
    done = tinykd("report", model, "--board", "nrf5340dk", "--frame-stride-ms", "32")
    assert done.returncode == 2 and "--frame-stride-ms only applies to a stride: add --every MS" in done.stderr


def test_cli_never_imports_tensorflow(shared_models):
    code = ("import sys; from tinykd.cli import main; sys.argv = ['tinykd', 'report', sys.argv[1], '--board', "
            "'ek-ra6m4', '--format', 'json', '--every', '100']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
            "sys.stderr.write('IMPORTED ' + ','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code, str(shared_models / "kws_ref_model.tflite")],
                          capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().endswith("IMPORTED"), done.stderr


@pytest.mark.parametrize("file_name, message", [
    ("kws_ref_model_float32.tflite", "CONV_2D (operator 0) takes float32 input with int8 weights: a hybrid"),
    ("README.md", "not a TFLite flatbuffer"),
])
def test_cli_refuses_models_tflm_cannot_run_with_exit_code_2(shared_models, file_name, message):
    done = tinykd("report", shared_models / file_name)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_truncated_file_and_unknown_board_exit_2(shared_models, tmp_path):
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes((shared_models / "kws_ref_model.tflite").read_bytes()[:20_000])
    done = tinykd("report", truncated)
    assert done.returncode == 2 and "corrupt or truncated" in done.stderr
    done = tinykd("report", shared_models / "kws_ref_model.tflite", "--board", "esp32")
    assert done.returncode == 2 and "--board: unknown board 'esp32'" in done.stderr


def test_float_model_is_reported_with_a_warning(shared_models):
    result = report((shared_models / "pretrainedResnet.tflite").read_bytes(), "nucleo-h743zi2")
    assert result.precision == "float32" and result.kernels == "reference (float32)"
    assert result.kernel_scratch_bytes == 0 and result.confidence == "low"
    assert any("CMSIS-NN int8 kernels do not apply" in warning for warning in result.warnings)


def test_cli_calibrate_uses_the_users_measurements(shared_models, tmp_path):
    (tmp_path / "kws.tflite").write_bytes((shared_models / "kws_ref_model.tflite").read_bytes())
    (tmp_path / "measured.csv").write_text("model,board,latency_ms\nkws.tflite,nucleo-l4r5zi,90.0\n")
    done = tinykd("report", tmp_path / "kws.tflite", "--board", "nucleo-l4r5zi", "--format", "json",
                  "--calibrate", tmp_path / "measured.csv")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)[0]
    assert result["confidence"] == "calibrated"
    assert result["latency_ms"] == pytest.approx(90.0, rel=1e-6)
