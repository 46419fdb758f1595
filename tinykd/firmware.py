"""Run an export on emulated Cortex-M cores: TFLite Micro + CMSIS-NN built for the core, on QEMU.

The one adapter to the C side's harness (firmware_export/harness/): it runs the harness's Makefile in a child
process, which builds TFLM once per (tree, core, flags, compiler) into ~/.cache/tinykd/tflm, links the export's
files unchanged with a bare-metal main and runs it on qemu-system-arm under a time limit; this module parses the
result lines the firmware prints over semihosting into a `CoreResult` per core.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tinykd.errors import FirmwareError

HARNESS = Path(__file__).resolve().parents[1] / "firmware_export" / "harness"
# This repository's tests use the tree in ../shared beside the checkout.
SHARED_TFLM = HARNESS.parents[2] / "shared" / "tflm" / "tflite-micro"
# What each emulated core is and which real parts its run stands for. QEMU runs instructions, not cycles.
CORES = {
    "cortex-m3": ("mps2-an385", "Cortex-M3; its ARMv7-M code is also what an M0/M0+ build runs closest to "
                                "(TFLM's M0+ build uses the same C kernels, fewer instructions available)"),
    "cortex-m4": ("mps2-an386", "Cortex-M4 (CMSIS-NN DSP kernels), e.g. STM32F4, nRF52840"),
    "cortex-m7": ("mps2-an500", "Cortex-M7 (CMSIS-NN DSP kernels), e.g. STM32F7/H7, i.MX RT"),
    "cortex-m33": ("mps2-an505", "Cortex-M33 (CMSIS-NN DSP kernels), e.g. nRF5340, STM32U5"),
    "cortex-m55": ("mps3-an547", "Cortex-M55 with Helium (CMSIS-NN MVE kernels); Cortex-M85 runs the same code"),
}
DEFAULT_CORES = ("cortex-m4", "cortex-m33", "cortex-m55")
# A board's core -> the emulated core whose code it runs.
BOARD_CORES = {"cortex-m0plus": "cortex-m3", "cortex-m3": "cortex-m3", "cortex-m4": "cortex-m4",
               "cortex-m7": "cortex-m7", "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55",
               "cortex-m85": "cortex-m55"}
# The third-party code TFLM's Makefile expects beside the tree (it downloads it when missing).
THIRD_PARTY = ("flatbuffers", "gemmlowp", "ruy", "kissfft", "cmsis", "cmsis_nn")
DOWNLOADS = Path("tensorflow/lite/micro/tools/make/downloads")
TIME_LIMIT_S = 300
# Building TFLM for a new core takes about 5 minutes on 2 cores; the rest of a check takes seconds.
_BUILD_LIMIT_S = 3600


@dataclass(frozen=True, kw_only=True)
class OperatorCount:
    """Instructions one operator of the model took in one Invoke(), in execution order."""

    type: str
    instructions: int


@dataclass(frozen=True, kw_only=True)
class CoreResult:
    """An export checked on one emulated core. `features_differing` is None when the export has no front-end;
    `error` says why the run stopped early (a hang past the time limit, a failed allocation)."""

    core: str
    machine: str
    vectors_passed: int
    vectors_total: int
    features_differing: int | None
    arena_exported_bytes: int
    arena_exported_allocates: bool
    arena_smallest_bytes: int
    arena_used_bytes: int
    instructions: int
    operators: tuple[OperatorCount, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Every golden vector (and front-end value) matches and the exported arena constant allocates."""
        return (self.error is None and self.vectors_total > 0 and self.vectors_passed == self.vectors_total
                and self.arena_exported_allocates and not self.features_differing)


def require_tools(tflm: Path) -> None:
    """Raise FirmwareError, one line saying how to get it, unless the TFLM tree (with its third-party code),
    the Arm cross-compiler, make and QEMU are all here."""
    if not HARNESS.is_dir():
        raise FirmwareError(f"the firmware harness is not at {HARNESS}; run tinykd from its source checkout")
    tree = Path(tflm)
    if not (tree / "tensorflow/lite/micro/tools/make/Makefile").is_file():
        raise FirmwareError(f"no TFLite Micro tree at {tree}: clone https://github.com/tensorflow/tflite-micro "
                            "and pass it with --tflm PATH or TINYKD_TFLM_DIR")
    missing = [name for name in THIRD_PARTY if not any((tree / DOWNLOADS / name).glob("*"))]
    if missing:
        raise FirmwareError(
            f"the TFLite Micro tree at {tree} lacks its third-party code ({', '.join(missing)} under {DOWNLOADS}): "
            "run `make -f tensorflow/lite/micro/tools/make/Makefile TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 "
            "OPTIMIZED_KERNEL_DIR=cmsis_nn third_party_downloads` in it once, with network access")
    for tool, package in (("arm-none-eabi-g++", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
                          ("qemu-system-arm", "qemu-system-arm"), ("make", "make")):
        if shutil.which(tool) is None:
            raise FirmwareError(f"{tool} not found: install it with `apt-get install {package}` (or `make setup`)")


def export_name(export_dir: Path) -> str:
    """The file prefix of the export in export_dir (`kws` for kws_model_data.cc).

    Raises:
        FirmwareError: no export, an export without golden vectors, or more than one export in the folder.
    """
    names = sorted(path.name.removesuffix("_model_data.cc") for path in Path(export_dir).glob("*_model_data.cc"))
    if len(names) != 1:
        found = f"found {', '.join(names)}" if names else "found none"
        raise FirmwareError(f"{export_dir}: expected the files of one `tinykd export` (NAME_model_data.cc), {found}")
    if not (Path(export_dir) / f"{names[0]}_golden_vectors.h").is_file():
        raise FirmwareError(f"{export_dir}: {names[0]}_golden_vectors.h is missing; re-export with this tinykd "
                            "(every export now carries golden vectors)")
    return names[0]


def check(export_dir: Path, tflm: Path, cores: tuple[str, ...] = DEFAULT_CORES,
          time_limit_s: float = TIME_LIMIT_S) -> tuple[CoreResult, ...]:
    """Build the export in export_dir for each core and run it on QEMU; one CoreResult per core.

    Raises:
        FirmwareError: a missing tool (see require_tools), an unknown core, or a build that failed (with the
            compiler's last lines).
    """
    unknown = [core for core in cores if core not in CORES]
    if unknown:
        raise FirmwareError(f"unknown core {unknown[0]!r}; the harness runs {', '.join(CORES)}")
    require_tools(tflm)
    name = export_name(export_dir)
    with tempfile.TemporaryDirectory(prefix="tinykd-firmware-") as build_root:
        return tuple(_run_core(Path(export_dir), name, Path(tflm), core, Path(build_root) / core, time_limit_s)
                     for core in cores)


@dataclass(frozen=True, kw_only=True)
class HarnessRun:
    """What one `make` of the harness printed: the firmware's output, and whether QEMU hit the time limit."""

    stdout: str
    stderr: str
    returncode: int
    timed_out: bool


def run_harness(target: str, core: str, build: Path, time_limit_s: float = TIME_LIMIT_S,
                variables: dict[str, str] | None = None) -> HarnessRun:
    """Make `target` of the harness Makefile for `core` in the folder `build` (e.g. `run`, or `probe`: the
    machine alone, no TFLM), with extra make `variables`; QEMU is stopped after time_limit_s.

    Raises:
        FirmwareError: make itself ran past an hour (a TFLM library build takes about 5 minutes).
    """
    # The harness's python3 must have Pillow (TFLM's Makefile imports PIL): this interpreter's does.
    settings = {"CORE": core, "BUILD": str(build), "TIME_LIMIT_S": str(max(1, round(time_limit_s))),
                "PYTHON_DIR": str(Path(sys.executable).parent), **(variables or {})}
    command = ["make", "-s", "-f", str(HARNESS / "Makefile"), target,
               *(f"{key}={value}" for key, value in settings.items())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=_BUILD_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise FirmwareError(f"{core}: `make {target}` took over {_BUILD_LIMIT_S} s; see the TFLM build log "
                            "under ~/.cache/tinykd/tflm") from None
    # `timeout` exits 124 when it stopped QEMU, and make reports it as its recipe's error.
    return HarnessRun(stdout=done.stdout, stderr=done.stderr, returncode=done.returncode,
                      timed_out=re.search(r"Error 124\b", done.stderr) is not None)


def _run_core(export_dir: Path, name: str, tflm: Path, core: str, build: Path,
              time_limit_s: float) -> CoreResult:
    run = run_harness("run", core, build, time_limit_s,
                      {"TFLM": str(tflm.resolve()), "EXPORT": str(export_dir.resolve()), "NAME": name})
    if not (build / f"{name}.elf").is_file():
        lines = (run.stderr.strip() or run.stdout.strip()).splitlines()[-12:]
        raise FirmwareError(f"{core}: building {name} failed:\n" + "\n".join(lines))
    result = parse_output(run.stdout, core)
    if run.timed_out:
        result = _with_error(result, f"hung: stopped after the {int(time_limit_s)} s time limit")
    elif run.returncode != 0 and result.error is None:
        result = _with_error(result, f"QEMU exited with an error: {run.stderr.strip()[-300:]}")
    return result


def parse_output(text: str, core: str) -> CoreResult:
    """The CoreResult in the harness firmware's output (its line format: firmware_export/harness/harness_main.cc).
    Output cut short (a hang, a fault) gives a result whose `error` says what was last seen."""
    fields: dict = {"core": core, "machine": CORES.get(core, ("?",))[0], "vectors_passed": 0, "vectors_total": 0,
                    "features_differing": None, "arena_exported_bytes": 0, "arena_exported_allocates": False,
                    "arena_smallest_bytes": 0, "arena_used_bytes": 0, "instructions": 0}
    operators, errors, finished = [], [], False
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        values = dict(re.findall(r"(\w+)=(\S+)", rest))
        if word == "arena" and "exported_bytes" in values:
            fields |= {"arena_exported_bytes": int(values["exported_bytes"]),
                       "arena_exported_allocates": values["allocates"] == "1"}
        elif word == "arena" and "smallest_bytes" in values:
            fields |= {"arena_smallest_bytes": int(values["smallest_bytes"]),
                       "arena_used_bytes": int(values["used_bytes"])}
        elif word == "vector":
            fields["vectors_total"] += 1
            fields["vectors_passed"] += rest.split()[1] == "PASS"
            if fields["vectors_total"] == 1:
                fields["instructions"] = int(values["instructions"])
        elif word == "operator":
            operators.append(OperatorCount(type=rest.split()[1], instructions=int(values["instructions"])))
        elif word == "features":
            fields["features_differing"] = int(values["differing"])
        elif word == "error":
            errors.append(rest)
        elif word == "done":
            finished = True
    if not finished:
        errors.append("the firmware stopped before printing `done` (a hang or a fault)")
    return CoreResult(**fields, operators=tuple(operators), error="; ".join(errors) or None)


def _with_error(result: CoreResult, reason: str) -> CoreResult:
    fields = {**result.__dict__, "error": reason if result.error is None else f"{reason}; {result.error}"}
    return CoreResult(**fields)


def as_dict(result: CoreResult) -> dict:
    """A CoreResult as plain JSON types, with `passed` and `stands_in_for` added; `features_differing` is 0 for
    an export without a front-end, and `features_checked` says whether the front-end ran."""
    return {**result.__dict__, "features_differing": result.features_differing or 0,
            "features_checked": result.features_differing is not None,
            "operators": [op.__dict__ for op in result.operators], "passed": result.passed,
            "stands_in_for": CORES[result.core][1] if result.core in CORES else ""}


def verify_build(export_dir: Path, board_core: str, mode: str, tflm: Path) -> dict:
    """The build's firmware check (recipe key verify.firmware): the export's golden vectors on the emulated core
    that runs `board_core`'s code; returns the report's record, with `status` "passed" or "not run" and why.

    Raises:
        FirmwareError: a vector failed, the exported arena does not allocate, or (mode "always") a tool is missing.
    """
    if mode == "never":
        return {"status": "not run", "reason": "verify.firmware is never"}
    core = BOARD_CORES.get(board_core)
    if core is None:
        return {"status": "not run", "reason": f"no emulated core runs {board_core} code"}
    try:
        require_tools(tflm)
    except FirmwareError as error:
        if mode == "always":
            raise
        return {"status": "not run", "reason": str(error)}
    (result,) = check(export_dir, tflm, (core,))
    if not result.passed:
        arena = "allocates" if result.arena_exported_allocates else "does not allocate"
        raise FirmwareError(f"{export_dir}: on {core} ({result.machine}) {result.vectors_passed} of "
                            f"{result.vectors_total} golden vectors pass, the exported arena of "
                            f"{result.arena_exported_bytes:,} B {arena}{'; ' + result.error if result.error else ''}; "
                            f"run `tinykd firmware check {export_dir}`")
    return {"status": "passed", **as_dict(result)}
