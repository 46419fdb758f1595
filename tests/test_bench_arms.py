"""The benchmarks' arms: a recipe that trains on labels (distill.alpha 0) is itself the pipeline without KD, so
its kd builds give the no_kd figures; nothing is built twice and no other pipeline's figure is carried for it.
Arms are carried only from a run on data made the same way, and the keyword benchmark checks its recipe and data
before it empties its runs folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bench_module

from tinykd import config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return bench_module("fashion_mnist")


def _built(accuracies: list[float]) -> list[dict]:
    return [{"report": {"int8": {"tflm_accuracy": a}}} for a in accuracies]


def test_a_labels_only_recipe_takes_its_no_kd_figures_from_its_kd_builds(bench):
    kws = config.load(REPO / "pipelines" / "kws_dscnn.yaml")
    assert kws.distill.alpha == 0
    assert list(bench._variants(kws, [])) == ["kd", "baseline"]
    assert bench._carried(REPO / "bench" / "results" / "kws.json", ["kd", "baseline"], kws) == {}
    carried = bench._carried(REPO / "bench" / "results" / "kws.json", ["kd"], kws)
    assert list(carried) == ["baseline"]  # only the arm that is another pipeline comes from the earlier run

    runs = {"kd": _built([0.90, 0.80]), "baseline": _built([0.85, 0.85])}
    no_kd = bench._arm("no_kd", runs, {})
    assert no_kd["no_kd_int8_accuracy_seeds"] == [0.90, 0.80]
    assert no_kd["no_kd_int8_accuracy"] == pytest.approx(0.85)
    assert "distill.alpha 0" in no_kd["no_kd_source"]


def test_a_distilling_recipe_builds_or_carries_its_no_kd_arm(bench):
    fashion = config.load(REPO / "pipelines" / "fashion_mnist.yaml")
    assert fashion.distill.alpha > 0
    arms = bench._variants(fashion, ["x=1"])
    assert arms["no_kd"] == ["x=1", "distill.alpha=0"]
    runs = {"kd": _built([0.9]), "no_kd": _built([0.7])}
    assert bench._arm("no_kd", runs, {})["no_kd_int8_accuracy_seeds"] == [0.7]
    carried = bench._carried(REPO / "bench" / "results" / "fashion_mnist.json", ["kd", "baseline"], fashion)
    assert list(carried) == ["no_kd"] and carried["no_kd"]["source"].startswith("carried from")


def test_a_baseline_is_carried_only_from_a_run_on_a_set_made_the_same_way(bench, tmp_path):
    kws = config.load(REPO / "pipelines" / "kws_dscnn.yaml")
    made = {"seed": 0, "extra_train_speakers": 101, "held_out": "matched", "flite_clip_factor": 1}
    baseline = {"baseline_int8_accuracy": 0.875, "baseline_int8_accuracy_seeds": [0.87, 0.88],
                "machine": {"date": "2026-12-07"}}
    earlier = tmp_path / "baseline.json"

    earlier.write_text(json.dumps(baseline | {"data_settings": made}))
    carried = bench._carried(earlier, ["kd"], kws, made)  # the same set: carried
    assert carried["baseline"]["figures"]["baseline_int8_accuracy_seeds"] == [0.87, 0.88]
    with pytest.raises(SystemExit, match="'held_out': 'random'.*build baseline too"):
        bench._carried(earlier, ["kd"], kws, made | {"held_out": "random"})
    with pytest.raises(SystemExit, match="made with None"):  # data tinykd did not make (real Speech Commands)
        bench._carried(earlier, ["kd"], kws, None)
    earlier.write_text(json.dumps(baseline))  # results from before data_settings was recorded: carried, with their note
    assert list(bench._carried(earlier, ["kd"], kws, made)) == ["baseline"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "data.held_out_speakers=bogus"], "--set data.held_out_speakers=bogus: .*must be one of random, matched"),
    (["--set", "data.held_out_speakers=matched", "--data", "{data}"], "held_out_speakers: random, but the recipe asks "
                                                                       "for matched"),
    (["--set", "seed=3"], "--set seed=3: the benchmark names each build and sets its seed; use --seeds"),
])
def test_the_keyword_benchmark_refuses_a_wrong_recipe_key_or_data_set_before_emptying_its_runs(tmp_path, extra,
                                                                                             message):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "kept.txt").write_text("an earlier run's build")
    data = tmp_path / "data"
    data.mkdir()
    (data / "synthesis.json").write_text(json.dumps({"extra_train_speakers": 101, "held_out": "random"}))
    command = [sys.executable, str(REPO / "bench" / "kws.py"), "--runs", str(runs)]
    done = subprocess.run(command + [arg.format(data=data) for arg in extra], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and re.search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert (runs / "kept.txt").is_file()
