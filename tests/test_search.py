"""tinykd search on the smoke recipe: a few candidates, one or two epochs a trial, real conversion, report and TFLM."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import SMOKE_RECIPE, tinykd_process
from tinykd import config
from tinykd.errors import SearchError
from tinykd.search import SearchOptions, halving, search, space


def _smoke(**search_keys) -> config.Config:
    return config.load(SMOKE_RECIPE, {f"search.{k}": str(v) for k, v in search_keys.items()}, smoke=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search") / "runs"


@pytest.fixture(scope="module")
def searched(runs, tmp_path_factory):
    """A search of 4 candidates under a latency budget just above the recipe's own student's."""
    from tinykd.boards import get_board
    from tinykd.data import load
    from tinykd.report.arena import Worker
    from tinykd.search.measure import measure

    cfg = _smoke(trials=4)
    data = load(cfg.data, cfg.data.seed)
    with Worker() as worker:
        reference = measure(cfg.distill.student, data, cfg, get_board(cfg.target.board), worker)
    cfg = replace(cfg, search=replace(cfg.search, latency_ms=reference.latency_ms * 1.01))
    return search(cfg, runs, SearchOptions(out_dir=tmp_path_factory.mktemp("searched")))


def test_rungs_grow_by_eta_up_to_max_epochs():
    assert halving.rungs(config.SearchConfig(min_epochs=2, max_epochs=18, eta=3)) == (2, 6, 18)
    assert halving.rungs(config.SearchConfig(min_epochs=1, max_epochs=2, eta=3)) == (1, 2)
    assert halving.rungs(config.SearchConfig(min_epochs=4, max_epochs=4)) == (4,)


def test_space_has_defaults_per_data_kind_and_samples_fit_the_input(smoke_cfg):
    kws = config.load(Path(SMOKE_RECIPE).parent / "kws_dscnn.yaml")
    assert space.data_kind(smoke_cfg) == "image" and space.data_kind(kws) == "audio"
    audio = space.resolve(kws.search, "audio")
    assert audio.archs[0] == "ds_cnn" and audio.pool_between_blocks == (False,)
    image = space.resolve(replace(smoke_cfg.search, blocks=(4,)), "image")
    assert image.blocks == (4,) and image.archs == space.DEFAULTS["image"].archs
    students = space.sample(image, 6, seed=0, reference=smoke_cfg.distill.student, input_shape=(28, 28, 1))
    assert students[0] == smoke_cfg.distill.student and len(set(students)) == len(students) == 6
    # four blocks pooled between them after a stride-2 first conv leave 28 -> 14 -> 7 -> 3 -> 1: no room for the
    # pool_flatten head's pooling
    assert all(len(s.filters) == 4 for s in students[1:])
    assert all(s.head != "pool_flatten" for s in students[1:] if s.first_strides == (2, 2))
    assert not space.fits_input(replace(students[0], filters=(8, 8, 8, 8), first_strides=(2, 2)), (28, 28, 1))
    assert all(space.fits_input(s, (28, 28, 1)) for s in students)


def test_pareto_keeps_the_trials_nothing_beats_on_accuracy_and_every_cost():
    from tinykd.search.results import pareto

    def trial(index, accuracy, latency, flash=100, ram=100):
        return {"index": index, "int8_val_accuracy": accuracy, "latency_ms": latency, "flash_bytes": flash,
                "ram_bytes": ram}

    trials = [trial(0, 0.8, 10), trial(1, 0.7, 5), trial(2, 0.7, 12), trial(3, 0.6, 20, flash=50)]
    assert [t["index"] for t in pareto(trials)] == [0, 1, 3]  # 2 is slower than 0 and no more accurate

def test_search_section_errors_name_the_key():
    with pytest.raises(config.ConfigError, match=r"search\.heads: must be a non-empty list of gap"):
        _smoke(heads="[gapp]")
    with pytest.raises(config.ConfigError, match=r"search\.min_epochs: must be from 1 to max_epochs"):
        config.load(SMOKE_RECIPE, {"search.min_epochs": "5", "search.max_epochs": "2"})


def test_over_budget_candidates_are_never_trained(searched):
    summary = searched.summary
    limit = summary["budget"]["latency_ms"]
    over = {c["index"] for c in summary["candidates"] if c["over_budget"]}
    assert over, "the budget should drop at least one of the sampled candidates"
    assert all(c["cost"]["latency_ms"] > limit for c in summary["candidates"] if c["index"] in over)
    trained = {json.loads(p.read_text())["index"] for p in (searched.out_dir / "trials").glob("*.json")}
    assert 0 in trained and not trained & over
    assert all(t["latency_ms"] <= limit for t in summary["trials"])
    assert "over budget: latency_ms" in (searched.out_dir / "table.md").read_text()


def test_search_writes_table_plot_and_winner(searched):
    summary = searched.summary
    assert summary["rungs"] == [1, 2] and summary["brackets"] == 1  # no search.hours: one bracket
    assert (searched.out_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    table = (searched.out_dir / "table.md").read_text()
    assert all(c["name"] in table for c in summary["candidates"])
    winner = summary["winner"]
    top = [t for t in summary["trials"] if t["rung"] == max(t["rung"] for t in summary["trials"])]
    assert winner["int8_val_accuracy"] == max(t["int8_val_accuracy"] for t in top)
    assert winner["index"] in summary["pareto"]


def test_with_hours_brackets_draw_new_students_until_the_space_runs_out(runs, tmp_path):
    """Four students in the space (the recipe's and three of filters 4/8), two per bracket, time to spare: two
    brackets, no student drawn twice, then the search ends; the winner is the best of the top rung of both."""
    cfg = _smoke(trials=2, hours=10, archs="[cnn]", blocks="[2]", filters="[4, 8]", convs_per_block="[1]",
                 first_kernels="[[3, 3]]", first_strides="[[1, 1]]", pool_between_blocks="[true]",
                 heads="[pool_flatten]")
    seen = []
    summary = search(cfg, runs, SearchOptions(out_dir=tmp_path / "out", log=seen.append)).summary
    names = [c["name"] for c in summary["candidates"]]
    assert summary["brackets"] == 2 and [c["bracket"] for c in summary["candidates"]] == [0, 0, 1, 1]
    assert len(set(names)) == 4 and names[0] == "cnn 8-16 pool pool_flatten"
    assert any("the space holds no student the 2 brackets have not drawn" in line for line in seen)
    assert {t["index"] for t in summary["trials"] if t["bracket"] == 1} == {2, 3}
    assert not summary["stopped_by_time_budget"]
    top = [t for t in summary["trials"] if t["rung"] == max(t["rung"] for t in summary["trials"])]
    assert {t["bracket"] for t in top} == {0, 1}
    assert summary["winner"]["int8_val_accuracy"] == max(t["int8_val_accuracy"] for t in top)


def test_a_winner_the_pruning_budget_leaves_alone_gets_the_rewind_epochs_as_distillation(tmp_path):
    from tinykd.search.results import recipe, unused_rewind_epochs

    cfg = config.load(Path(SMOKE_RECIPE).parent / "fashion_mnist.yaml")
    assert cfg.prune.method == "structured" and cfg.prune.rewind_epochs == 15
    board = cfg.target.board
    meets = {"latency_ms": cfg.prune.budget.latency_ms - 1, "tflite_bytes": 10**4, "macs": 10**6}
    misses = meets | {"latency_ms": cfg.prune.budget.latency_ms + 1}
    assert unused_rewind_epochs(cfg, meets, board) == 15
    assert unused_rewind_epochs(cfg, misses, board) == 0  # pruning thins it and rewinds itself
    assert unused_rewind_epochs(cfg, meets, "nrf5340dk") == 0  # measured on another board than pruning checks
    magnitude = replace(cfg, prune=config.PruneConfig(method="magnitude", target_sparsity=0.3))
    assert unused_rewind_epochs(magnitude, meets, board) == 0

    chosen = {"index": 3, "int8_val_accuracy": 0.9, "epochs": 18, "latency_ms": 40.0, "flash_bytes": 40000,
              "ram_bytes": 20000}
    student = config.as_dict(replace(cfg.distill.student, filters=(8, 16, 24)))
    distill, rewind = cfg.distill.epochs, cfg.prune.rewind_epochs
    for cost, epochs in ((meets, distill + rewind), (misses, distill)):
        written = tmp_path / f"written-{epochs}.yaml"
        written.write_text(recipe(cfg, chosen, cost, student, board, "fashion_mnist.yaml"))
        loaded = config.load(written)
        assert loaded.distill.epochs == epochs and loaded.prune == cfg.prune
        assert (f"distill.epochs {distill} + {rewind}" in written.read_text()) == (epochs == distill + rewind)


def test_written_recipe_builds(searched, runs):
    from tinykd.pipeline import build

    written = config.load(searched.recipe, smoke=True)
    winner = searched.summary["winner"]
    assert config.as_dict(written.distill.student) == winner["student"]
    assert written.name.endswith("-searched-smoke")
    result = build(written, runs)
    assert 0.0 <= result.tflm_accuracy <= 1.0 and result.tflite_bytes > 0
    # the same stages as the searched recipe: a section that is off stays off under --smoke
    assert [s["stage"] for s in result.report["stages"]][:4] == ["teacher", "distill", "prune", "quantize"]


def test_an_untrained_candidate_costs_what_the_build_ships_after_quantization_aware_training(smoke_data,
                                                                                              tiny_teacher):
    """The search's measurement (untrained, post-training quantized) against the build's path for the same student
    (trained with QAT, then converted): the same graph, so the same latency, RAM and flash on the board. Equal
    widths give equal zero biases before training, and average pooling is where QAT used to add an op."""
    from tinykd import models
    from tinykd.boards import get_board
    from tinykd.config import DistillConfig, ModelConfig, QuantizeConfig
    from tinykd.convert import int8_model
    from tinykd.distill import Schedule, Teaching
    from tinykd.keras_shim import keras
    from tinykd.quantize import quantize, scheme_for
    from tinykd.report import analyze, for_board
    from tinykd.report.arena import Worker
    from tinykd.search.measure import measure

    cfg = _smoke()
    student = ModelConfig(filters=(8, 8, 8), head="avgpool")
    board = get_board(cfg.target.board)
    keras.utils.set_random_seed(0)
    model = models.build(student, smoke_data.input_shape, smoke_data.num_classes, "student")
    qat = quantize(model, Teaching(teacher=tiny_teacher, config=DistillConfig(student=student)), smoke_data,
                   Schedule.of(QuantizeConfig(epochs=1, batch_size=64), seed=0), scheme_for(cfg))
    with Worker() as worker:
        measured = measure(student, smoke_data, cfg, board, worker)
        shipped = for_board(analyze(int8_model(qat, smoke_data, cfg, 32), "qat", worker), board)
    assert shipped.latency_ms == pytest.approx(measured.latency_ms)
    assert shipped.ram_bytes == measured.ram_bytes
    # the QAT conversion's metadata is 8 B longer and the flatbuffer's alignment moves with it (24 B here, 16 B on
    # the keyword student); a requantize op or shared bias buffers are hundreds of bytes plus a kernel
    assert 0 <= shipped.flash_bytes - measured.flash_bytes <= 32


def test_fit_width_scales_each_draw_to_the_widest_that_meets_the_budget(runs, tmp_path):
    """With search.fit_width, every drawn student comes back at the widest eighth of its filters that meets the
    budget: measured again here, one eighth wider misses it. The recipe's own student keeps its width."""
    from tinykd.boards import get_board
    from tinykd.data import load
    from tinykd.report.arena import Worker
    from tinykd.search.measure import WIDTHS, measure, over_budget

    cfg = _smoke(trials=3, min_epochs=1, max_epochs=1, fit_width="true")
    data = load(cfg.data, cfg.data.seed)
    board = get_board(cfg.target.board)
    with Worker() as worker:
        reference = measure(cfg.distill.student, data, cfg, board, worker)
    budget = {"latency_ms": reference.latency_ms * 1.01, "flash_bytes": reference.flash_bytes + 2000}
    cfg = replace(cfg, search=replace(cfg.search, **budget))
    summary = search(cfg, runs, SearchOptions(out_dir=tmp_path / "out")).summary
    reference_record, *fitted = summary["candidates"]
    assert "drawn" not in reference_record and reference_record["student"]["width_multiplier"] == 1.0
    assert fitted and all(c["drawn"]["width_multiplier"] == 1.0 for c in fitted)
    # a draw whose narrowest eighth still misses (a DS-CNN's extra kernel code can take the flash) is kept as that
    # eighth, over budget, for the record
    assert all(c["student"]["width_multiplier"] == WIDTHS[0] for c in fitted if c["over_budget"])
    feasible = [c for c in fitted if not c["over_budget"]]
    assert feasible and any(c["student"]["width_multiplier"] != 1.0 for c in feasible)
    with Worker() as worker:
        for candidate in feasible:
            width = candidate["student"]["width_multiplier"]
            assert width in WIDTHS and width < WIDTHS[-1]
            wider = replace(space.student_config(candidate["student"]), width_multiplier=width + 1 / 8)
            cost = measure(wider, data, cfg, board, worker)
            assert over_budget(vars(cost), budget), f"{candidate['name']}: one eighth wider still meets the budget"
    assert {t["index"] for t in summary["trials"]} == {0} | {c["index"] for c in feasible}


def test_a_recipe_student_over_the_budget_is_also_measured_thinned_as_pruning_would_thin_it(runs, tmp_path):
    """Under a budget the recipe's student misses, the first bracket ends with that student thinned by the recipe's
    prune steps to the budget, measured and trained like any draw: the student a searched one has to beat."""
    from tinykd.boards import get_board
    from tinykd.data import load
    from tinykd.report.arena import Worker
    from tinykd.search.measure import measure, over_budget

    cfg = _smoke(trials=2, min_epochs=1, max_epochs=1)
    data = load(cfg.data, cfg.data.seed)
    board = get_board(cfg.target.board)
    with Worker() as worker:
        reference = measure(cfg.distill.student, data, cfg, board, worker)
    budget = {"latency_ms": reference.latency_ms * 0.8}
    cfg = replace(cfg, search=replace(cfg.search, **budget))
    seen = []
    summary = search(cfg, runs, SearchOptions(out_dir=tmp_path / "out", log=seen.append)).summary
    recipe_student, *_, last = summary["candidates"]
    assert recipe_student["over_budget"] and recipe_student["name"] == "cnn 8-16 pool pool_flatten"
    assert last["thinned_from"] == recipe_student["name"]
    assert not last["over_budget"] and last["cost"]["latency_ms"] <= budget["latency_ms"]
    assert any(f"[candidate {last['index']}] {last['name']} (the recipe's student, thinned to the budget)" in line
               for line in seen)
    assert last["index"] in {t["index"] for t in summary["trials"]}
    assert f"| {last['index']} | {last['name']} (the recipe's, thinned to the budget) |" in (
        tmp_path / "out" / "table.md").read_text()
    # The build's own pruning code (tinykd.structured on the Keras student, the latency from an int8 conversion and
    # `tinykd report` as the build measures it) settles on the same widths for this budget.
    from tinykd import models
    from tinykd.config import BudgetConfig
    from tinykd.prune import _budget_figures, _least_fraction
    from tinykd.structured import plan, prunable_layers, thin

    model = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student", seed=cfg.seed)
    prune = replace(cfg.prune, method="structured", budget=BudgetConfig(latency_ms=budget["latency_ms"]))
    figures = lambda thinned: _budget_figures(thinned, data, cfg, board.id)  # noqa: E731
    assert prune.budget.met_by(figures(thin(model, plan(model, prune.step_fraction))[0])), "one step meets it here"
    pruned, _ = thin(model, plan(model, _least_fraction(model, prune, figures)))
    widths = [pruned.get_layer(name).filters for name in prunable_layers(pruned)]
    assert widths == last["student"]["filters"] and widths != recipe_student["student"]["filters"]


def test_near_chance_compares_the_best_first_rung_with_the_most_common_class():
    balanced = np.repeat(np.arange(12), 39)  # 468 validation clips of 12 classes, as the keyword set
    first = [{"rung": 0, "epochs": 2, "int8_val_accuracy": a} for a in (0.143, 0.150, 0.160)]  # what 2 epochs gave
    assert "best 16.0% int8 validation, most common class 8.3%" in halving.near_chance(first, balanced)
    sixth = [{"rung": 0, "epochs": 6, "int8_val_accuracy": a} for a in (0.16, 0.28, 0.42)]  # what 6 epochs gave
    assert halving.near_chance(sixth, balanced) is None
    assert halving.near_chance(sixth[:1] + [{"rung": 1, "epochs": 18, "int8_val_accuracy": 0.9}], balanced)
    skewed = np.array([0] * 80 + [1] * 20)  # chance is 80%: near it means under 90%
    assert halving.near_chance([{"rung": 0, "epochs": 2, "int8_val_accuracy": 0.89}], skewed)
    assert halving.near_chance([{"rung": 0, "epochs": 2, "int8_val_accuracy": 0.91}], skewed) is None


def test_a_first_rung_that_leaves_every_student_at_chance_is_named(runs, tmp_path):
    """Students that learn nothing in rung 0 (a learning rate of 1e-9) rank at random: the search says so."""
    cfg = config.load(SMOKE_RECIPE, {"search.trials": "2", "search.min_epochs": "1", "search.max_epochs": "1",
                                     "distill.learning_rate": "1e-9"}, smoke=True)
    seen = []
    summary = search(cfg, runs, SearchOptions(out_dir=tmp_path / "out", log=seen.append)).summary
    assert len(summary["warnings"]) == 1
    assert summary["warnings"][0].startswith("bracket 0: rung 0 (1 epochs) left every candidate near chance")
    assert "Raise search.min_epochs" in summary["warnings"][0]
    assert any(line.startswith("[search] warning: bracket 0: rung 0") for line in seen)


def test_impossible_budget_names_the_smallest_candidate(runs, tmp_path):
    cfg = _smoke(trials=2, latency_ms=0.001)
    with pytest.raises(SearchError, match=r"no candidate of the 2 measured meets the budget \(latency_ms <= 0\.001"
                                          r"\) on nucleo-l4r5zi: the smallest, candidate \d \(.*\), needs [0-9.]+ ms, "
                                          r"[0-9,]+ B flash and [0-9,]+ B RAM") as raised:
        search(cfg, runs, SearchOptions(out_dir=tmp_path / "out"))
    measured = json.loads((tmp_path / "out" / "candidates.json").read_text())["candidates"]
    smallest = min(measured, key=lambda c: c["cost"]["latency_ms"])
    assert f"{smallest['cost']['flash_bytes']:,} B flash" in str(raised.value)
    assert not (tmp_path / "out" / "trials").exists()


def test_killed_search_resumes_without_redoing_finished_trials(runs, tmp_path):
    out = tmp_path / "out"
    args = ("search", str(SMOKE_RECIPE), "--smoke", "--trials", "3", "--runs", str(runs), "-o", str(out))
    process = tinykd_process(*args)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "[trial c001-e1] rung 0" in line:  # the second trial has started, the first one is finished
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    first = (out / "trials" / "c000-e1.json").read_text()
    assert not (out / "trials" / "c001-e1.json").exists()

    process = tinykd_process(*args)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout + stderr
    assert "[trial c000-e1] finished earlier, reusing" in stdout
    assert "[trial c000-e1] rung 0" not in stdout and "[trial c001-e1] rung 0" in stdout
    assert (out / "trials" / "c000-e1.json").read_text() == first  # same record: same timestamps, not redone
    assert json.loads((out / "search.json").read_text())["winner"] is not None
    assert (out / "recipe.yaml").exists()


def test_cli_budget_errors_name_the_option():
    for args, expected in ((("--budget", "latency_ms=-3"), "error: --budget latency_ms=-3: latency_ms: must be "),
                           (("--budget", "latncy_ms=3"), "error: --budget 'latncy_ms=3': expected latency_ms=N"),
                           (("--board", "nope"), "error: --board nope: unknown board")):
        process = tinykd_process("search", str(SMOKE_RECIPE), *args)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 and stderr.startswith(expected), stdout + stderr
