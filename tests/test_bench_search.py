"""bench/search.py carries default builds from an earlier keyword benchmark only when a seed rebuilt here
reproduces that benchmark exactly, so a carried default is never a different pipeline's figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bench_module

REPO = Path(__file__).resolve().parents[1]
KWS = REPO / "bench" / "results" / "kws.json"


@pytest.fixture(scope="module")
def search():
    return bench_module("search")


@pytest.fixture(scope="module")
def kws():
    return json.loads(KWS.read_text())


def _rebuilt(kws: dict, seed: int) -> dict:
    """Seed `seed`'s default build as `_build` returns it, with the figures the benchmark recorded."""
    run = next(r for r in kws["runs"]["kd"] if r["seed"] == seed)
    int8 = next(s["int8"] for s in run["stages"] if s["stage"] == "int8")
    return {"name": run["name"], "seed": seed, "seconds": 1.0,
            "report": {"int8": {"tflm_accuracy": int8["tflm_accuracy"]},
                       "board": {k: int8[k] for k in ("latency_ms", "flash_bytes", "ram_bytes")}}}


def test_a_reproduced_seed_carries_the_others(search, kws):
    carried = search._carried_defaults(kws["recipe"], [_rebuilt(kws, 0)], [1, 2], KWS)
    assert [r["seed"] for r in carried] == [1, 2]
    assert [r["report"]["int8"]["tflm_accuracy"] for r in carried] == kws["student_int8_accuracy_seeds"][1:]
    assert all("seeds [0] rebuilt here" in r["carried"] for r in carried)


@pytest.mark.parametrize("figure,value", [("tflm_accuracy", 0.5), ("flash_bytes", 1), ("latency_ms", 1.0)])
def test_a_seed_that_does_not_reproduce_refuses_the_carry(search, kws, figure, value):
    changed = _rebuilt(kws, 0)
    part = "int8" if figure == "tflm_accuracy" else "board"
    changed["report"][part][figure] += value
    with pytest.raises(SystemExit, match="pipeline changed since"):
        search._carried_defaults(kws["recipe"], [changed], [1, 2], KWS)


def test_nothing_rebuilt_or_another_recipe_refuses_the_carry(search, kws):
    with pytest.raises(SystemExit, match="nothing shows"):
        search._carried_defaults(kws["recipe"], [], [1, 2], KWS)
    with pytest.raises(SystemExit, match="not 'fashion_mnist'"):
        search._carried_defaults("fashion_mnist", [_rebuilt(kws, 0)], [1, 2], KWS)
