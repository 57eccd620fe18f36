"""compare end to end on a tiny model: selection on validation only, then one test, seeds, report, resuming."""

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from softprompt.core.errors import DataError
from softprompt.measuring.classify import classify_rows
from softprompt.measuring.compare import DEFAULT_METHODS, CompareConfig, compare, method_candidates, plan
from softprompt.measuring.generation import Writer
from softprompt.measuring.methods import TRAINED, Kind, MethodSpec
from softprompt.measuring.methods.run import RunSetup
from softprompt.measuring.presets import load_preset, load_test_rows
from softprompt.measuring.records import SELECTION, Failed, to_json
from softprompt.measuring.report_records import REPORT, LabelRow
from tests.measuring.compare_helpers import SMALL, compare_setup, few_shot_compare, tiny_task_dir


def test_every_trained_method_gets_the_same_search_budget():
    config = CompareConfig(search_budget=4, slow_test_rows=3)
    for kind in TRAINED:
        candidates = method_candidates(kind, config, labels=2)
        assert len(candidates) == 4 and len(set(candidates)) == 4, kind
    prompt = method_candidates(Kind.PROMPT_TUNING, config, labels=2)
    assert {c.lr for c in prompt} == set(config.pt_lrs)  # every learning rate is tried
    few = method_candidates(Kind.FEW_SHOT, config, labels=3)
    assert {(c.instruction, c.shots, c.order) for c in few} == {
        (i, 3 * k, o) for i in (True, False) for k in (1, 2) for o in (0, 1)
    }
    assert all(c.test_rows == 3 for c in few)
    assert method_candidates(Kind.ZERO_SHOT, config, labels=2) == [
        MethodSpec(Kind.ZERO_SHOT, instruction=True),
        MethodSpec(Kind.ZERO_SHOT, instruction=False),
    ]


def test_compare_end_to_end(tiny_dirs, tmp_path):
    setup = compare_setup(tiny_dirs, tmp_path)
    config = CompareConfig(methods=tuple(k.value for k in Kind), isolate=False, slow_test_rows=6, **SMALL)
    report = compare(setup, config)
    assert all(isinstance(m, LabelRow) for m in report.methods), [getattr(m, "error", "") for m in report.methods]
    by_kind = {m.kind: m for m in report.methods}
    assert set(by_kind) == set(Kind)
    assert report.header.train_rows + report.header.validation_rows == 16 and report.test_rows == 10
    tuned = by_kind[Kind.PROMPT_TUNING]
    assert len(tuned.selected.candidates) == 2 and len(tuned.tested.test_runs) == 2  # two candidates, two seeds
    assert tuned.selected.chosen in [c.settings for c in tuned.selected.candidates]
    low, high = tuned.tested.accuracy_ci
    assert low <= tuned.tested.accuracy <= high
    assert len(by_kind[Kind.ZERO_SHOT].tested.test_runs) == 1  # deterministic: one run
    assert by_kind[Kind.FEW_SHOT].tested.costs.eval_rows == 6 and by_kind[Kind.FULL].tested.costs.eval_rows == 6
    p_tuning = by_kind[Kind.P_TUNING].selected
    assert p_tuning.trainable_params > p_tuning.stored_params == 2 * 32
    goals = [g.goal for g in report.goals]
    assert [g.split(" (")[0] for g in goals] == ["best soft prompt"] * 2 + [
        "best soft prompt's trainable parameters <= LoRA rank 4's"
    ]
    assert [g.split(") - ")[1].split(" (")[0].split(" >=")[0] for g in goals[:2]] == ["best prompt engineering", "LoRA"]
    out = tmp_path / "out"
    for name in ("report.md", "report.json", "report.png", "selection.json", "split.json"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "| prompt tuning | " in md and "## Goals" in md and "**(chosen)**" in md
    saved = json.loads((out / "report.json").read_text())
    assert "scores" not in json.dumps(saved["methods"][0]) and saved["goals"]
    assert to_json(REPORT.validate_python(saved)) == saved  # the file reads back as the report it is
    assert not any((out / "runs" / "full-ft").glob("*/model.safetensors"))  # 0.5 GB each in real life: removed
    selected = {m["kind"]: m for m in json.loads((out / "selection.json").read_text())["methods"]}
    for run, tested in zip(selected["prompt-tuning"]["runs"], tuned.tested.test_runs, strict=True):
        card = ModelCard.load(Path(run["artifact"]) / "README.md")  # each seed's prompt carries its test scores
        found = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert found["accuracy"] == pytest.approx(tested.accuracy, abs=1e-6)
        assert found["f1"] == pytest.approx(tested.macro_f1, abs=1e-6)
        assert "Source not recorded" not in card.text  # the task data it trained on is named
    # A second run reuses every finished phase instead of training again.
    again = compare(setup, config)
    assert [m.tested.accuracy for m in again.methods] == [m.tested.accuracy for m in report.methods]


def test_the_test_file_is_opened_only_after_every_choice_is_made(tiny_dirs, tmp_path):
    """Every file open in the process is seen (an audit hook); the first of the test file must find every
    method's choice already written to selection.json."""
    setup = compare_setup(tiny_dirs, tmp_path)
    test_file = str((Path(setup.data) / "test.jsonl").resolve())
    train_file = str((Path(setup.data) / "train.jsonl").resolve())
    seen: list[tuple[str, bool]] = []
    state = {"on": True}

    def hook(event, args):
        if state["on"] and event == "open" and isinstance(args[0], (str, Path)):
            path = str(Path(args[0]).resolve()) if str(args[0]).endswith(".jsonl") else None
            if path in (test_file, train_file):
                selection = Path(setup.output) / "selection.json"
                ready = selection.is_file() and len(json.loads(selection.read_text())["methods"]) == len(
                    DEFAULT_METHODS
                )
                seen.append((path, ready))

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one switches itself off below
    try:
        compare(setup, CompareConfig(isolate=False, **SMALL))
    finally:
        state["on"] = False
    opens_of_test = [ready for path, ready in seen if path == test_file]
    assert opens_of_test, "compare never read the test file"
    assert all(opens_of_test), "the test file was opened before every choice was written"
    assert any(path == train_file for path, _ in seen)


def test_selection_runs_without_the_test_file(tiny_dirs, tmp_path):
    """In child processes too: with the test file gone, every choice is still made, then compare says what is missing."""
    setup = compare_setup(tiny_dirs, tmp_path)
    (Path(setup.data) / "test.jsonl").rename(tmp_path / "elsewhere.jsonl")
    with pytest.raises(DataError, match="test.jsonl"):
        compare(setup, CompareConfig(methods=("zero-shot", "prompt-tuning"), isolate=True, **SMALL))
    selection = json.loads((Path(setup.output) / "selection.json").read_text())
    assert [m["kind"] for m in selection["methods"]] == ["zero-shot", "prompt-tuning"]
    assert all("error" not in m and m["chosen"] for m in selection["methods"])
    runs = selection["methods"][1]["runs"]
    assert len(runs) == 2 and all(Path(r["artifact"], "adapter_model.safetensors").is_file() for r in runs)


def test_validation_rows_never_train(tiny_dirs, tmp_path):
    setup = compare_setup(tiny_dirs, tmp_path)
    _, split, jobs = plan(setup, CompareConfig(**SMALL))
    assert not set(split.train) & set(split.validation) and len(split.train) + len(split.validation) == 16
    assert all(job.validation_index == tuple(split.validation) for job in jobs)


def test_a_failed_phase_is_reported_not_fatal(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _run_one

    setup = compare_setup(tiny_dirs, tmp_path)
    bad = RunSetup(**{**setup.__dict__, "model": str(tmp_path / "no-model")})
    _, _, jobs = plan(bad, CompareConfig(methods=("zero-shot",), **SMALL))
    from softprompt.measuring.compare import _job_json

    result = _run_one("search", {"job": _job_json(jobs[0])}, bad, True, Kind.ZERO_SHOT, SELECTION)
    assert isinstance(result, Failed) and "no-model" in result.error


def test_prompt_engineering_results_are_shared_across_budgets(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _same_job

    setup = compare_setup(tiny_dirs, tmp_path)
    bigger = RunSetup(**{**setup.__dict__, "budget": 50, "output": str(tmp_path / "other")})
    job = {"phase": "search", "setup": setup.__dict__, "job": {"kind": "zero-shot"}}
    other = {"phase": "search", "setup": bigger.__dict__, "job": {"kind": "zero-shot"}}
    assert _same_job(job, other, Kind.ZERO_SHOT)
    assert not _same_job(job, other, Kind.LORA)


def _test_accuracy(setup, context):
    """A saved context's test accuracy, scored here, apart from compare."""
    preset, base = load_preset(setup.preset), setup.load()
    rows = load_test_rows(preset, setup.data)
    found = classify_rows(Writer(base, [None], context).scorer(), base, preset, rows, 16, "test row")
    return found.member_metrics()[0]["accuracy"]


def test_few_shot_reports_the_context_validation_chose(tiny_dirs, tmp_path):
    """The few-shot number is the test accuracy of the artifact validation chose (its prompt.txt), as a user
    deploys it, chosen among instruction x shots x draw x order; the other draws of its setting are listed
    beside it with their own scores."""
    setup, _, report = few_shot_compare(tiny_dirs, tmp_path)
    (row,) = report.methods
    (selected,) = json.loads((Path(setup.output) / "selection.json").read_text())["methods"]
    (run,) = selected["runs"]  # one artifact: the context validation chose
    chosen = (Path(run["artifact"]) / "prompt.txt").read_text(encoding="utf-8")
    tested, candidates = row.tested, row.selected.candidates
    assert len(tested.test_runs) == 1 and tested.accuracy_std == 0 and row.selected.chosen == run["settings"]
    assert tested.accuracy == pytest.approx(_test_accuracy(setup, chosen), abs=1e-9)
    assert {c.settings.split("draw ")[1] for c in candidates} == {"0", "1", "2"}
    assert run["val_accuracy"] == max(c.validation["val_accuracy"] for c in candidates)
    draws = tested.draws.runs
    assert [d.seed for d in draws] == [run["seed"], *(d["seed"] for d in selected["draws"])]
    assert sorted(d.seed for d in draws) == [0, 1, 2] and [d.chosen for d in draws] == [True, False, False]
    for draw, listed in zip(draws[1:], selected["draws"], strict=True):
        assert listed["settings"].startswith(run["settings"].split(", order")[0])  # the chosen setting, redrawn
        context = (Path(listed["artifact"]) / "prompt.txt").read_text(encoding="utf-8")
        assert draw.test["accuracy"] == pytest.approx(_test_accuracy(setup, context), abs=1e-9)
    assert tested.draws.mean == pytest.approx(sum(d.test["accuracy"] for d in draws) / 3)
    md = (Path(setup.output) / "report.md").read_text(encoding="utf-8")
    assert f"few-shot: validation chose draw {run['seed']}" in md and "the 3 draws of that setting" in md


def test_a_tiny_validation_split_gives_way_to_cross_validation(tiny_dirs, tmp_path):
    """16 training rows would validate on 3: the trained methods choose on 3 folds, every row validating once,
    each candidate's score the folds' mean; the chosen candidate's runs keep the first fold."""
    setup = compare_setup(tiny_dirs, tmp_path)
    config = CompareConfig(methods=("zero-shot", "prompt-tuning", "lora"), isolate=False, **{**SMALL, "cv_below": 50})
    _, split, jobs = plan(setup, config)
    zero, prompt, lora = jobs
    assert zero.folds == () and len(prompt.folds) == 2 and prompt.folds == lora.folds
    held = [split.validation, *[list(v) for _, v in prompt.folds]]
    assert sorted(i for fold in held for i in fold) == list(range(16))  # each row validates exactly once
    report = compare(setup, config)
    assert report.header.cv_folds == 3
    tuned = next(m for m in report.methods if m.kind is Kind.PROMPT_TUNING).selected
    for candidate in json.loads((tmp_path / "out" / "results" / "prompt-tuning.search.json").read_text())["candidates"]:
        folds = candidate["folds"]
        assert len(folds) == 3
        assert candidate["val_accuracy"] == pytest.approx(sum(f["val_accuracy"] for f in folds) / 3)
    assert tuned.val_seed_mean["val_accuracy"] == tuned.validation["val_accuracy"]  # the folds' mean chose
    assert "3-fold cross-validation" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "selection.json").read_text())["split"]["cv_folds"] == 3


def _library(tiny_dirs, tmp_path, data):
    """A prompt trained by ``softprompt train`` on ``data``: a one-prompt library."""
    from softprompt.core.data import DataConfig
    from softprompt.core.prompt import PromptConfig
    from softprompt.training.train import TrainConfig, tune

    library = tmp_path / "library"
    tune(
        str(tiny_dirs["llama"]),
        DataConfig(data=str(data / "train.jsonl"), template="{text} ->", target_column="label", eval_rows=4),
        PromptConfig(num_virtual_tokens=2, init="random"),
        TrainConfig(output=str(library / "source"), epochs=1, batch_size=4, progress=False, checkpoints=False),
        device="cpu",
    )
    return library


def test_compare_starts_soft_prompts_from_a_library_and_says_which(tiny_dirs, tmp_path):
    other = tiny_task_dir(tmp_path / "other", train=12, test=2)
    setup = compare_setup(tiny_dirs, tmp_path)
    library = _library(tiny_dirs, tmp_path, other)
    config = CompareConfig(
        methods=("prompt-tuning", "prefix-tuning"), isolate=False, library=str(library), pt_inits=("library",),
        prefix_inits=("library",), **SMALL,
    )  # fmt: skip
    report = compare(setup, config)
    for method in report.methods:
        (transfer,) = method.selected.transfer
        assert transfer.chosen == str(library / "source") and transfer.scored == 1
        assert all(c.error is None for c in method.selected.candidates)
    selection = json.loads((tmp_path / "out" / "results" / "prefix-tuning.search.json").read_text())
    assert all(c["init_from"] == str(library / "source") for c in selection["candidates"])
    card = (Path(selection["runs"][0]["artifact"]) / "README.md").read_text()
    assert "library prompt" in card and str(library / "source") in card
    assert "library init: 1 prompts" in (tmp_path / "out" / "report.md").read_text()


def test_compare_refuses_a_library_trained_on_its_own_data_before_anything_runs(tiny_dirs, tmp_path):
    from softprompt.core.errors import ConfigError

    setup = compare_setup(tiny_dirs, tmp_path)
    library = _library(tiny_dirs, tmp_path, Path(setup.data))
    config = CompareConfig(methods=("prompt-tuning",), isolate=False, library=str(library), **SMALL)
    with pytest.raises(ConfigError, match="this task's own data"):
        compare(setup, config)
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
    inside = CompareConfig(methods=("prompt-tuning",), library=str(tmp_path / "out" / "runs"), **SMALL)
    with pytest.raises(ConfigError, match="overlap"):
        compare(setup, inside)
