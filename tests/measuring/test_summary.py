"""A comparison's numbers (measuring/summary.py): the reported soft prompt is chosen by its seed mean; few-shot's
number is the chosen context's alone, its other draws beside it."""

import json
from pathlib import Path

import pytest

from softprompt.measuring.compare import plan
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.presets import load_test_rows
from softprompt.measuring.records import LABEL_TESTED, SELECTION, Outcome, TestCosts
from softprompt.measuring.report_records import Done, Result, Selected
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
    (before,) = report.methods
    outcome = Outcome(Kind.FEW_SHOT, SELECTION.validate_python(selection), LABEL_TESTED.validate_python(test))
    (after,) = summarise(preset, setup, config, split, [outcome], gold).methods
    for key in ("accuracy", "accuracy_std", "accuracy_ci", "macro_f1"):
        assert getattr(after.tested, key) == getattr(before.tested, key), key
    assert [d.test["accuracy"] for d in after.tested.draws.runs] == [before.tested.accuracy, 1.0, 1.0]
    assert after.tested.draws.mean == pytest.approx((before.tested.accuracy + 2) / 3)


def test_the_reported_soft_prompt_is_chosen_by_its_seed_mean():
    from softprompt.measuring.summary import best_on_validation

    lucky = _row(Kind.PREFIX_TUNING, (0.9, 0.3), (0.7, 0.5))  # one lucky seed, two poor ones
    steady = _row(Kind.LATE_PROMPT, (0.8, 0.4), (0.8, 0.4))
    assert best_on_validation([lucky, steady]) is steady


def _row(kind, first, mean):
    """A method's row: its chosen candidate's validation (accuracy, label loss) and its seeds' mean."""
    spec = MethodSpec(kind, lr=0.1, num_virtual_tokens=2, depth=0.5)
    scores = [{"val_accuracy": a, "val_label_loss": loss} for a, loss in (first, mean)]
    chose = Selected(
        chosen=spec.settings,
        chosen_spec=spec,
        validation=scores[0],
        val_seed_mean=scores[1],
        trainable_params=1,
        trainable_percent=0.0,
        stored_params=1,
        stored_percent=0.0,
    )
    costs = TestCosts(eval_rows=1, test_seconds=0.0, ms_per_example=0.0, adapter_bytes=0)
    return Done(kind=kind, method=spec.method, selected=chose, tested=Result(costs=costs))
