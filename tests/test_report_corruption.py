"""Seeded corruptions of the shared models: tinykd reports or refuses each one; it never crashes or hangs.

Every case goes through `analyze()` (flatbuffer checks in-process, then the arena search in one long-lived TFLM
child process that is restarted after a crash or a hang), which is what `tinykd report` runs per model.
"""

import random
import subprocess
import sys
import time

import pytest

from tinykd.errors import ModelError
from tinykd.report import analyze, arena

CASES = 1000
TIME_LIMIT_S = 10.0


def corruptions(models: dict[str, bytes], count: int, seed: int = 0):
    """(kind, model name, corrupted bytes): flipped bits anywhere, overwritten bytes where flatbuffer tables and
    offsets live (the first 64 bytes and the last 4 KiB), truncations, and two files spliced together."""
    rng = random.Random(seed)
    names = sorted(models)
    for _ in range(count):
        kind, name = rng.choice(["flip", "overwrite", "truncate", "splice"]), rng.choice(names)
        data = bytearray(models[name])
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            for _ in range(rng.randint(1, 4)):
                near_start = rng.random() < 0.3
                position = rng.randrange(64) if near_start else len(data) - 1 - rng.randrange(4096)
                data[position] = rng.randrange(256)
        elif kind == "truncate":
            data = data[:rng.randrange(len(data))]
        else:
            other = models[rng.choice(names)]
            data = data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]
        yield kind, name, bytes(data)


@pytest.fixture(scope="module")
def models(shared_models):
    return {path.name: path.read_bytes() for path in sorted(shared_models.glob("*.tflite"))}


def test_a_thousand_corruptions_give_reports_or_clear_errors(models):
    outcomes = {"report": 0, "refused": 0, "crashed": 0, "timed out": 0}
    with arena.Worker(time_limit_s=TIME_LIMIT_S) as worker:
        for kind, name, data in corruptions(models, CASES):
            started = time.monotonic()
            try:
                analysis = analyze(data, f"{kind} {name}", worker)
                assert analysis.arena.bytes_32bit > 0
                outcomes["report"] += 1
            except ModelError as error:
                message = str(error)
                assert message.startswith(f"{kind} {name}: ")
                outcomes["crashed" if "crashed" in message else
                         "timed out" if "did not finish" in message else "refused"] += 1
            # A hang would show as a case running past the child's time limit.
            assert time.monotonic() - started < TIME_LIMIT_S + 5, (kind, name)
    assert sum(outcomes.values()) == CASES
    assert outcomes["report"] > 100 and outcomes["refused"] > 100, outcomes  # both paths really exercised


def test_corrupted_files_through_the_cli_exit_0_or_2(models, tmp_path):
    for number, (kind, name, data) in enumerate(corruptions(models, 12, seed=1)):
        path = tmp_path / f"{number}_{kind}.tflite"
        path.write_bytes(data)
        done = subprocess.run([sys.executable, "-m", "tinykd", "report", str(path), "--board", "ek-ra6m4"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode in (0, 2), (kind, name, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.returncode == 0 or done.stderr.startswith("error: ")
