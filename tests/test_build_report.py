"""The build report's per-class figures, checked against counts worked out by hand."""

import pytest

from tinykd.build_report import class_metrics


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
