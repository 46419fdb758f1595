"""tinykd.firmware and the C side's harness, on the real cross-compiler and QEMU.

The machine layer (start-up, linker scripts, semihosting, SysTick instruction counting, the time limit) runs
on every emulated core without TFLM. The TFLM runs need a TFLM tree with its third-party code (CMSIS-NN,
flatbuffers, ...); `require_tools` stops with one line saying how to get it.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinykd import firmware
from tinykd.errors import FirmwareError

REPO = Path(__file__).resolve().parents[1]
CORES = tuple(firmware.CORES)
LOOP_INSTRUCTIONS = 20_000_000  # probe_main.c: 10,000,000 iterations of subs + bne
# SysTick ticks once every this many instructions under -icount shift=0 (1e9 / the machine's clock).
INSTRUCTIONS_PER_TICK = {"cortex-m3": 40, "cortex-m4": 40, "cortex-m7": 40, "cortex-m33": 50, "cortex-m55": 31.25}


def tinykd(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinykd", *map(str, args)], capture_output=True, cwd=REPO, env=env)


@pytest.mark.parametrize("core", CORES)
def test_probe_runs_on_the_core_and_counts_instructions_to_within_two_ticks(core, tmp_path):
    run = firmware.run_harness("probe", core, tmp_path, time_limit_s=60)

    assert run.returncode == 0 and not run.timed_out, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "tinykd-harness probe" and lines[-1] == "done"
    values = dict(item.split("=") for item in lines[1].split()[1:])
    assert int(values["loop_instructions"]) == LOOP_INSTRUCTIONS
    ticks, counted = int(values["ticks"]), int(values["instructions"])
    # The probe wraps SysTick every 65,536 ticks, so this count went through the wrap interrupt several times.
    assert ticks > 4 * 65_536
    assert counted == int(ticks * INSTRUCTIONS_PER_TICK[core])
    # The loop plus the two reads of the counter around it; one tick of rounding at each end.
    assert LOOP_INSTRUCTIONS <= counted <= LOOP_INSTRUCTIONS + 2 * INSTRUCTIONS_PER_TICK[core] + 100


def test_a_firmware_that_hangs_is_stopped_by_the_time_limit_and_reported(tmp_path):
    started = time.monotonic()
    run = firmware.run_harness("probe", "cortex-m4", tmp_path, time_limit_s=2, variables={"PROBE_HANG": "1"})

    assert run.timed_out and run.returncode != 0
    assert time.monotonic() - started < 60
    assert "probe loop_instructions=" in run.stdout and "done" not in run.stdout
    result = firmware.parse_output(run.stdout, "cortex-m4")
    assert not result.passed and "stopped before printing `done`" in result.error


HARNESS_OUTPUT = """\
harness core=cortex-m4 machine=mps2-an386
arena exported_bytes=36256 allocates=1 used_bytes=22600 halted=0
arena smallest_bytes=22832 used_bytes=22600
vector 0 PASS differing=0 instructions=7579040
operator 0 CONV_2D instructions=1000000
operator 1 DEPTHWISE_CONV_2D instructions=6000000
operator 2 FULLY_CONNECTED instructions=579040
vector 1 PASS differing=0 instructions=7579100
log a line TFLM printed
done
"""


def test_parse_output_reads_every_result_line():
    result = firmware.parse_output(HARNESS_OUTPUT, "cortex-m4")

    assert result.passed and result.error is None
    assert (result.vectors_passed, result.vectors_total, result.features_differing) == (2, 2, None)
    assert (result.arena_exported_bytes, result.arena_smallest_bytes, result.arena_used_bytes) == (36256, 22832, 22600)
    assert result.instructions == 7579040
    assert [(op.type, op.instructions) for op in result.operators] == [
        ("CONV_2D", 1000000), ("DEPTHWISE_CONV_2D", 6000000), ("FULLY_CONNECTED", 579040)]
    plain = json.loads(json.dumps(firmware.as_dict(result)))
    assert plain["operators"][1] == {"type": "DEPTHWISE_CONV_2D", "instructions": 6000000}
    assert (plain["features_differing"], plain["features_checked"]) == (0, False)


@pytest.mark.parametrize("change, reason", [
    (("vector 1 PASS differing=0", "vector 1 FAIL differing=3"), "a golden output differs"),
    (("allocates=1", "allocates=0"), "the exported arena constant does not allocate"),
    (("done\n", ""), "the firmware stopped early"),
    (("done\n", "features FAIL differing=10 total=1960 max_abs=6\ndone\n"), "front-end features differ"),
])
def test_parse_output_fails_the_core_when(change, reason):
    result = firmware.parse_output(HARNESS_OUTPUT.replace(*change), "cortex-m4")

    assert not result.passed, reason


def test_missing_tflm_tree_exits_2_with_one_line_saying_how_to_get_it(tmp_path):
    done = tinykd("firmware", "check", tmp_path, "--tflm", tmp_path / "nowhere")

    stderr = done.stderr.decode()
    assert done.returncode == 2 and stderr.count("\n") == 1
    assert stderr.startswith("error: no TFLite Micro tree at ") and "--tflm PATH or TINYKD_TFLM_DIR" in stderr


def _tree(root: Path, third_party: tuple[str, ...]) -> Path:
    (root / "tensorflow/lite/micro/tools/make").mkdir(parents=True)
    (root / "tensorflow/lite/micro/tools/make/Makefile").write_text("# a TFLM tree's Makefile\n")
    for name in third_party:
        (root / firmware.DOWNLOADS / name).mkdir(parents=True)
        (root / firmware.DOWNLOADS / name / "LICENSE").write_text("\n")
    return root


def test_tree_without_its_third_party_code_exits_2_naming_what_is_missing_and_the_make_command(tmp_path):
    tree = _tree(tmp_path / "tflm", ("flatbuffers", "gemmlowp", "ruy", "kissfft"))

    done = tinykd("firmware", "check", tmp_path, "--tflm", tree)

    stderr = done.stderr.decode()
    assert done.returncode == 2 and stderr.count("\n") == 1
    assert "lacks its third-party code (cmsis, cmsis_nn under tensorflow/lite/micro/tools/make/downloads)" in stderr
    assert "third_party_downloads" in stderr


def test_missing_qemu_exits_2_naming_the_debian_package(tmp_path):
    tree = _tree(tmp_path / "tflm", firmware.THIRD_PARTY)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("arm-none-eabi-g++", "make"):
        (tools / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())

    done = tinykd("firmware", "check", tmp_path, "--tflm", tree, env={"PATH": str(tools)})

    stderr = done.stderr.decode()
    assert done.returncode == 2 and stderr.count("\n") == 1
    assert "qemu-system-arm not found: install it with `apt-get install qemu-system-arm`" in stderr


def test_export_name_needs_one_export_with_golden_vectors(tmp_path):
    with pytest.raises(FirmwareError, match="expected the files of one `tinykd export`.*found none"):
        firmware.export_name(tmp_path)
    (tmp_path / "kws_model_data.cc").write_text("\n")
    with pytest.raises(FirmwareError, match="kws_golden_vectors.h is missing; re-export"):
        firmware.export_name(tmp_path)
    (tmp_path / "kws_golden_vectors.h").write_text("\n")
    assert firmware.export_name(tmp_path) == "kws"


def test_unknown_core_is_refused_by_the_cli(tmp_path):
    done = tinykd("firmware", "check", tmp_path, "--core", "cortex-m99")

    assert done.returncode == 2 and "cortex-m99" in done.stderr.decode()


def test_verify_build_says_why_it_did_not_run_and_always_turns_that_into_an_error(tmp_path):
    from tinykd.build_report import _firmware_line

    tree = _tree(tmp_path / "tflm", ("flatbuffers",))

    assert firmware.verify_build(tmp_path, "cortex-m4", "never", tree) == {
        "status": "not run", "reason": "verify.firmware is never"}
    skipped = firmware.verify_build(tmp_path, "cortex-m4", "auto", tree)
    assert skipped["status"] == "not run" and "lacks its third-party code" in skipped["reason"]
    assert _firmware_line(skipped).startswith("Firmware on an emulated core: not run (the TFLite Micro tree at ")
    with pytest.raises(FirmwareError, match="lacks its third-party code"):
        firmware.verify_build(tmp_path, "cortex-m4", "always", tree)


def test_every_board_core_maps_to_an_emulated_core():
    from tinykd.boards import load_boards

    assert {board.core for board in load_boards().values()} <= set(firmware.BOARD_CORES)
    assert set(firmware.BOARD_CORES.values()) <= set(firmware.CORES)


# --- TFLM on the emulated cores ----------------------------------------------------------------------------------
# These build TFLM + CMSIS-NN from ../shared/tflm/tflite-micro, which needs the tree's third-party code under
# tensorflow/lite/micro/tools/make/downloads/. The first run on a machine builds the library once per core
# (about 5 minutes each on 2 cores, cached in ~/.cache/tinykd/tflm); later runs take seconds per core.

def _check(export_dir: Path, *args) -> tuple[subprocess.CompletedProcess, list[dict]]:
    done = tinykd("firmware", "check", export_dir, "--format", "json", *args)
    return done, (json.loads(done.stdout) if done.stdout.strip() else [])


@pytest.fixture(scope="module")
def kws_export(shared_models, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("kws") / "export"
    done = tinykd("export", shared_models / "kws_ref_model.tflite", "-o", out_dir, "--name", "kws")
    assert done.returncode == 0, done.stderr.decode()
    return out_dir


@pytest.mark.slow
def test_mlperf_kws_export_passes_on_m4_m33_and_m55_with_helium(kws_export):
    done, results = _check(kws_export)

    assert done.returncode == 0, done.stderr.decode()
    assert [result["core"] for result in results] == ["cortex-m4", "cortex-m33", "cortex-m55"]
    for result in results:
        assert result["vectors_passed"] == result["vectors_total"] == 4 and result["passed"]
        assert result["features_differing"] == 0 and not result["features_checked"]
        assert result["arena_exported_allocates"]
        assert 0 < result["arena_used_bytes"] <= result["arena_smallest_bytes"] <= result["arena_exported_bytes"]
        operators = sum(op["instructions"] for op in result["operators"])
        assert {op["type"] for op in result["operators"]} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
        assert 0.9 * result["instructions"] <= operators <= result["instructions"]
    # Helium's kernels do the same work in fewer instructions than the M4's DSP kernels.
    assert results[2]["instructions"] < results[0]["instructions"] / 2


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["flipped golden output", "arena constant too small"])
def test_a_corrupted_export_is_reported_as_a_failure(kws_export, tmp_path, corruption):
    import re
    import shutil

    broken = tmp_path / "export"
    shutil.copytree(kws_export, broken)
    if corruption == "flipped golden output":
        header = broken / "kws_golden_vectors.h"
        text = header.read_text()
        table = text.index("kws_golden_outputs[KWS_GOLDEN_VECTOR_COUNT]")
        first = re.compile(r"-?\d+").search(text, text.index("{\n", table))
        flipped = str(-int(first.group()) - 1)  # any other int8 value
        header.write_text(text[:first.start()] + flipped + text[first.end():])
    else:
        settings = broken / "kws_model_settings.h"
        settings.write_text(re.sub(r"KWS_ARENA_BYTES = \d+;", "KWS_ARENA_BYTES = 4096;", settings.read_text()))

    done, results = _check(broken, "--core", "cortex-m4")

    assert done.returncode == 1, done.stderr.decode()
    (result,) = results
    assert not result["passed"]
    if corruption == "flipped golden output":
        assert result["vectors_passed"] == 3 and result["arena_exported_allocates"]
    else:
        assert result["vectors_passed"] == 4 and not result["arena_exported_allocates"]
        assert result["arena_exported_bytes"] == 4096
