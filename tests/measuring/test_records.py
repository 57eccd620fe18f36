"""compare's records (measuring/records.py): files written before they were typed still read, and write back in
the same shape (a key that held null is left out; the fold scores' copy ``val_fold0`` is gone)."""

import copy

import pytest
from pydantic import TypeAdapter, ValidationError

from softprompt.core.forms import Form
from softprompt.core.prompt import Init
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.records import LABEL_TESTED, SELECTION, Failed, LabelTested, Selection, to_json
from softprompt.measuring.report_records import FailedRow, LabelRow

SPEC = {
    "kind": "late-prompt",
    "lr": 0.03,
    "num_virtual_tokens": 2,
    "init": "text",
    "shots": 0,
    "rank": 8,
    "test_rows": None,
    "scheduler": "linear",
    "reparam_hidden": 0,
    "instruction": True,
    "order": 0,
    "form": "kv",
    "depth": 0.5,
}
SETTINGS = "lr 0.03, linear, kv at 0.5 depth, text init, 2 tokens"
SCORES = {"val_accuracy": 0.75, "val_macro_f1": 0.7, "val_label_loss": 0.6}
FOLDS = [SCORES, {**SCORES, "val_accuracy": 0.5}]
TRIAL = {
    "spec": SPEC,
    "settings": SETTINGS,
    "seed": 0,
    **SCORES,
    "artifact": "/out/runs/late-prompt/candidate0",
    "steps": 4,
    "best_step": 2,
    "train_seconds": 1.5,
    "curve": [[1, 0.5, 0.9, 0.5], [2, 1.0, 0.8, 0.75]],
    "stopped_early": True,
    "val_fold0": SCORES,
    "folds": FOLDS,
}
# results/late-prompt.search.json as compare wrote it before its records were typed
SEARCH = {
    "kind": "late-prompt",
    "method": "late prompt",
    "train_rows": 12,
    "validation_rows": 4,
    "cv_folds": 2,
    "select_seconds": 9.5,
    "candidates": [TRIAL, {"spec": SPEC, "settings": SETTINGS, "seed": 0, "error": "boom"}],
    "chosen": 0,
    "runs": [TRIAL, {**TRIAL, "seed": 1, "val_fold0": None}],
    "trainable_params": 64,
    "stored_params": 96,
    "base_params": 1000,
    "process_seconds": 10.0,
    "peak_rss_mb": 512.0,
    "job": {"phase": "search"},
}


def _without(found, *keys):
    """``found`` with ``keys`` left out wherever they are, and every null left out (a spec, a config, keeps its)."""
    if isinstance(found, dict):
        return {
            k: v if k in ("spec", "chosen_spec") else _without(v, *keys)
            for k, v in found.items()
            if k not in keys and v is not None
        }
    if isinstance(found, list):
        return [_without(v, *keys) for v in found]
    return found


def test_an_earlier_search_result_reads_and_writes_back_in_its_shape():
    selection = SELECTION.validate_python(copy.deepcopy(SEARCH))
    assert isinstance(selection, Selection) and selection.kind is Kind.LATE_PROMPT and selection.cv_folds == 2
    choice = selection.found.choice
    assert choice.spec == MethodSpec(Kind.LATE_PROMPT, lr=0.03, num_virtual_tokens=2, form="kv", depth=0.5)
    assert choice.spec.form is Form.KV and choice.spec.init is Init.TEXT and choice.settings == choice.spec.settings
    assert choice.validation == SCORES and choice.folds == tuple(FOLDS)
    assert choice.curve[1].seconds == 1.0 and choice.curve[1].score == 0.75
    assert selection.found.candidates[1].failed and selection.found.candidates[1].validation == {}
    written = to_json(selection)
    assert written == _without({k: v for k, v in SEARCH.items() if k != "job"}, "val_fold0")
    assert "spec" in written["runs"][0] and written["runs"][0]["spec"]["test_rows"] is None  # a spec keeps nulls


def test_a_phase_that_failed_reads_as_a_failure():
    assert SELECTION.validate_python({"error": "OSError: no model", "process_seconds": 2.0, "job": {}}) == Failed(
        error="OSError: no model", process_seconds=2.0
    )
    tested = {
        "runs": [{"seed": 0, "accuracy": 0.5, "macro_f1": 0.4, "scores": [[-0.1, -2.0]]}],
        "eval_rows": 1,
        "test_seconds": 0.5,
        "ms_per_example": 500.0,
        "adapter_bytes": 10,
    }
    found = LABEL_TESTED.validate_python(tested)
    assert isinstance(found, LabelTested) and found.costs.eval_rows == 1 and found.draw_runs is None
    assert to_json(found) == {**tested, "process_seconds": 0.0}
    with pytest.raises(ValidationError):
        LABEL_TESTED.validate_python({"runs": []})  # neither a result nor a failure


ROW = TypeAdapter(LabelRow | FailedRow)
# a report.json row from before the seed mean, draws and transfer were recorded (run 5)
EARLIER_ROW = {
    "kind": "late-prompt",
    "method": "late prompt",
    "chosen": SETTINGS,
    "chosen_spec": SPEC,
    **SCORES,
    "candidates": [
        {k: TRIAL[k] for k in ("settings", "steps", "best_step", "stopped_early", "train_seconds", "curve", *SCORES)}
    ],
    "seed_runs": [
        {**{k: TRIAL[k] for k in ("seed", "steps", "best_step", "train_seconds", "curve", *SCORES)}, "error": None}
    ],
    "trainable_params": 64,
    "trainable_percent": 6.4,
    "stored_params": 96,
    "stored_percent": 9.6,
    "base_params": 1000,
    "select_seconds": 9.5,
    "transfer": None,
    "select_peak_rss_mb": None,
    "train_seconds": 1.5,
    "test_runs": [{"seed": 0, "accuracy": 0.8, "macro_f1": 0.7}],
    "accuracy": 0.8,
    "accuracy_std": 0.0,
    "accuracy_ci": [0.6, 0.9],
    "macro_f1": 0.7,
    "macro_f1_std": 0.0,
    "eval_rows": 10,
    "test_seconds": 1.0,
    "test_peak_rss_mb": None,
    "ms_per_example": 100.0,
    "adapter_bytes": 2048,
}


def test_an_earlier_report_row_reads_and_writes_back_in_its_shape():
    row = ROW.validate_python(EARLIER_ROW)
    assert isinstance(row, LabelRow) and row.selected.val_seed_mean == {} and row.tested.draws is None
    assert row.selected.candidates[0].curve[0].step == 1 and row.tested.accuracy_ci == (0.6, 0.9)
    assert ROW.dump_python(row, mode="json") == {**_without(EARLIER_ROW), "val_seed_mean": {}}  # none recorded
    failed = ROW.validate_python({"kind": "lora", "method": "LoRA", "error": "selection: OSError"})
    assert isinstance(failed, FailedRow) and failed.selected is None
    test_failed = ROW.validate_python({**_without(EARLIER_ROW, "test_runs"), "error": "test: boom"})
    assert isinstance(test_failed, FailedRow) and test_failed.selected.chosen == SETTINGS  # what it had chosen
