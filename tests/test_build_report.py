"""The build report's per-class figures, checked against counts worked out by hand."""

import pytest

from tinykd.build_report import MIN_ACCURACY_SPAN, accuracy_axis, class_metrics


def test_keyword_false_reject_and_false_accept_by_hand():
    labels = ("_silence_", "_unknown_", "yes", "no")
    confusion = [[8, 1, 1, 0],   # silence: 1 clip taken for "yes"
                 [0, 6, 2, 2],   # unknown: 4 clips taken for keywords
                 [0, 1, 9, 0],   # yes: 1 rejected as unknown
                 [0, 0, 3, 7]]   # no: 3 heard as "yes"
    metrics = class_metrics(confusion, labels)
    assert metrics["per_class"]["yes"] == {"samples": 10, "accuracy": 0.9}
    assert metrics["per_class"]["_unknown_"]["accuracy"] == 0.6
    # keyword clips: 20, recognised as their own keyword: 9 + 7 = 16
    assert metrics["false_reject_rate"] == pytest.approx(4 / 20)
    # silence + unknown clips: 20, taken for a keyword: 1 + 4 = 5
    assert metrics["false_accept_rate"] == pytest.approx(5 / 20)


def test_no_keyword_rates_without_filler_classes_and_empty_classes_have_no_accuracy():
    metrics = class_metrics([[3, 1], [0, 0]], ("shirt", "shoe"))
    assert "false_reject_rate" not in metrics and "false_accept_rate" not in metrics
    assert metrics["per_class"]["shirt"]["accuracy"] == 0.75
    assert metrics["per_class"]["shoe"] == {"samples": 0, "accuracy": None}


@pytest.mark.parametrize("percents", [[91.2, 90.8, 91.0], [99.9, 99.5], [0.5, 3.0], [48.5, 63.0, 12.0]])
def test_accuracy_axis_never_makes_a_small_drop_look_dramatic(percents):
    low, high = accuracy_axis(percents)
    assert 0.0 <= low <= min(percents) and max(percents) <= high <= 100.0
    assert high - low >= MIN_ACCURACY_SPAN  # e.g. 90.8-91.2 % is drawn on 86-96 %, not on 90.8-91.2 %


def test_pruning_note_and_title_say_when_structured_pruning_removed_nothing():
    from tinykd.build_report import _pruning_note, _stage_title

    step0 = {"step": 0, "val_accuracy": 0.87, "macs": 3_240_432, "tflite_bytes": 21_680, "latency_ms": 113.96,
             "kept": True}
    metrics = {"method": "structured", "steps": [step0], "budget_board": "nrf5340dk", "budget_met": True}
    note = _pruning_note({"prune": {"metrics": metrics}})
    assert note == ("Structured pruning removed nothing: the student is already estimated at 113.96 ms on nrf5340dk "
                    "(3,240,432 MACs, 21,680 B of int8 .tflite), within the budget, so the stage handed it on "
                    "unchanged and did not retrain it.")
    undone = {**step0, "step": 1, "kept": False, "macs": 2_900_000}
    over = _pruning_note({"prune": {"metrics": {**metrics, "steps": [step0, undone], "budget_met": False}}})
    assert "removed nothing" in over and "over the budget, and the first step cost more than" in over
    one = {**step0, "step": 1, "macs": 2_900_000, "latency_ms": 101.5}
    removed = _pruning_note({"prune": {"metrics": {**metrics, "steps": [step0, one]}}})
    assert removed.startswith("Structured pruning removed whole filters in 1 step(s): 3,240,432 -> 2,900,000 MACs")
    assert _stage_title("prune", metrics) == "student (float, not pruned)"
    assert _stage_title("prune", {**metrics, "steps": [step0, one]}) == "student (float, pruned)"
    assert _stage_title("prune", {"method": "magnitude", "sparsity": 0.3}) == "student (float, pruned)"
