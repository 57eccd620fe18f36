"""A comparison's numbers (measuring/summary.py): the reported soft prompt is chosen by its seed mean; few-shot's
number is the chosen context's alone, its other draws beside it."""

import json
from pathlib import Path

import pytest

from softprompt.measuring.compare import plan
from softprompt.measuring.presets import load_test_rows
from softprompt.measuring.summary import summarise
from tests.measuring.compare_helpers import few_shot_compare


def test_other_draws_never_change_the_few_shot_number(tiny_dirs, tmp_path):
    """Made perfect on test, the other draws move only their own spread, never the row's number or interval."""
    setup, config, report = few_shot_compare(tiny_dirs, tmp_path)
    results = Path(setup.output) / "results"
    selection = json.loads((results / "few-shot.search.json").read_text())
    test = json.loads((results / "few-shot.test.json").read_text())
    preset, split, _ = plan(setup, config)
    gold = [preset.label_index(row, "test row") for row in load_test_rows(preset, setup.data)]
    for draw in test["draw_runs"]:
        draw["scores"] = [[0.0 if k == g else -9.0 for k in range(len(preset.labels))] for g in gold]
        draw["accuracy"] = draw["macro_f1"] = 1.0
    (before,) = report["methods"]
    (after,) = summarise(preset, setup, config, split, [selection], [test], gold)["methods"]
    for key in ("accuracy", "accuracy_std", "accuracy_ci", "macro_f1"):
        assert after[key] == before[key], key
    assert [d["accuracy"] for d in after["draws"]["runs"]] == [before["accuracy"], 1.0, 1.0]
    assert after["draws"]["mean"] == pytest.approx((before["accuracy"] + 2) / 3)


def test_the_reported_soft_prompt_is_chosen_by_its_seed_mean():
    from softprompt.measuring.summary import best_on_validation

    lucky = {"kind": "prefix-tuning", "val_accuracy": 0.9, "val_label_loss": 0.3}
    lucky["val_seed_mean"] = {"val_accuracy": 0.7, "val_label_loss": 0.5}  # one lucky seed, two poor ones
    steady = {"kind": "late-prompt", "val_accuracy": 0.8, "val_label_loss": 0.4}
    steady["val_seed_mean"] = {"val_accuracy": 0.8, "val_label_loss": 0.4}
    assert best_on_validation([lucky, steady]) is steady
