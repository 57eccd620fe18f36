"""compare end to end on a tiny model: selection on validation only, then one test, seeds, report, resuming."""

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from softprompt.core.errors import DataError
from softprompt.measuring.compare import DEFAULT_METHODS, CompareConfig, compare, method_candidates, plan
from softprompt.measuring.methods import TRAINED, Kind, MethodSpec
from softprompt.measuring.methods.run import RunSetup
from softprompt.measuring.methods.search import search
from tests.measuring.compare_helpers import tiny_task_dir

SMALL = dict(seeds=2, search_budget=2, eval_every=1, patience=2, pt_lengths=(2,), pe_shots=(1,), pe_orders=2)


def _setup(tiny_dirs, tmp_path, **kw):
    data = tiny_task_dir(tmp_path / "data", train=16, test=10)
    return RunSetup(
        model=str(tiny_dirs["llama"]),
        preset="twitter_complaints",
        data=str(data),
        output=str(tmp_path / "out"),
        budget=2,
        batch_size=4,
        **kw,
    )


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
    setup = _setup(tiny_dirs, tmp_path)
    config = CompareConfig(methods=tuple(k.value for k in Kind), isolate=False, slow_test_rows=6, **SMALL)
    report = compare(setup, config)
    by_kind = {m["kind"]: m for m in report["methods"]}
    assert set(by_kind) == {k.value for k in Kind}
    assert all("error" not in m for m in report["methods"]), [m.get("error") for m in report["methods"]]
    assert report["train_rows"] + report["validation_rows"] == 16 and report["test_rows"] == 10
    tuned = by_kind["prompt-tuning"]
    assert len(tuned["candidates"]) == 2 and len(tuned["test_runs"]) == 2  # two candidates, two seeds
    assert tuned["chosen"] in [c["settings"] for c in tuned["candidates"]]
    low, high = tuned["accuracy_ci"]
    assert low <= tuned["accuracy"] <= high
    assert len(by_kind["zero-shot"]["test_runs"]) == 1  # deterministic: one run
    assert by_kind["few-shot"]["eval_rows"] == 6 and by_kind["full-ft"]["eval_rows"] == 6
    assert by_kind["p-tuning"]["trainable_params"] > by_kind["p-tuning"]["stored_params"] == 2 * 32
    goals = [g["goal"] for g in report["goals"]]
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
    assert not any((out / "runs" / "full-ft").glob("*/model.safetensors"))  # 0.5 GB each in real life: removed
    selected = {m["kind"]: m for m in json.loads((out / "selection.json").read_text())["methods"]}
    for run, tested in zip(selected["prompt-tuning"]["runs"], tuned["test_runs"], strict=True):
        card = ModelCard.load(Path(run["artifact"]) / "README.md")  # each seed's prompt carries its test scores
        found = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert found["accuracy"] == pytest.approx(tested["accuracy"], abs=1e-6)
        assert found["f1"] == pytest.approx(tested["macro_f1"], abs=1e-6)
        assert "Source not recorded" not in card.text  # the task data it trained on is named
    # A second run reuses every finished phase instead of training again.
    again = compare(setup, config)
    assert [m["accuracy"] for m in again["methods"]] == [m["accuracy"] for m in report["methods"]]


def test_the_test_file_is_opened_only_after_every_choice_is_made(tiny_dirs, tmp_path):
    """Every file open in the process is seen (an audit hook); the first of the test file must find every
    method's choice already written to selection.json."""
    setup = _setup(tiny_dirs, tmp_path)
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
    setup = _setup(tiny_dirs, tmp_path)
    (Path(setup.data) / "test.jsonl").rename(tmp_path / "elsewhere.jsonl")
    with pytest.raises(DataError, match="test.jsonl"):
        compare(setup, CompareConfig(methods=("zero-shot", "prompt-tuning"), isolate=True, **SMALL))
    selection = json.loads((Path(setup.output) / "selection.json").read_text())
    assert [m["kind"] for m in selection["methods"]] == ["zero-shot", "prompt-tuning"]
    assert all("error" not in m and m["chosen"] for m in selection["methods"])
    runs = selection["methods"][1]["runs"]
    assert len(runs) == 2 and all(Path(r["artifact"], "adapter_model.safetensors").is_file() for r in runs)


def test_validation_rows_never_train(tiny_dirs, tmp_path):
    setup = _setup(tiny_dirs, tmp_path)
    _, split, jobs = plan(setup, CompareConfig(**SMALL))
    assert not set(split.train) & set(split.validation) and len(split.train) + len(split.validation) == 16
    assert all(job.validation_index == tuple(split.validation) for job in jobs)


def test_a_failed_phase_is_reported_not_fatal(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _run_one

    setup = _setup(tiny_dirs, tmp_path)
    bad = RunSetup(**{**setup.__dict__, "model": str(tmp_path / "no-model")})
    _, _, jobs = plan(bad, CompareConfig(methods=("zero-shot",), **SMALL))
    from softprompt.measuring.compare import _job_json

    result = _run_one("search", {"job": _job_json(jobs[0])}, bad, True, Kind.ZERO_SHOT)
    assert "error" in result and "no-model" in result["error"]


def test_prompt_engineering_results_are_shared_across_budgets(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _same_job

    setup = _setup(tiny_dirs, tmp_path)
    bigger = RunSetup(**{**setup.__dict__, "budget": 50, "output": str(tmp_path / "other")})
    job = {"phase": "search", "setup": setup.__dict__, "job": {"kind": "zero-shot"}}
    other = {"phase": "search", "setup": bigger.__dict__, "job": {"kind": "zero-shot"}}
    assert _same_job(job, other, Kind.ZERO_SHOT)
    assert not _same_job(job, other, Kind.LORA)


def test_few_shot_settings_that_give_the_same_context_are_tried_once(tiny_dirs, tmp_path):
    """With one example per class, two example orders can be the same text: the search does not score it twice."""
    setup = _setup(tiny_dirs, tmp_path)
    _, _, jobs = plan(
        setup,
        CompareConfig(
            methods=("few-shot",),
            pe_shots=(1,),
            pe_orders=4,
            **{k: v for k, v in SMALL.items() if k not in ("pe_shots", "pe_orders")},
        ),
    )
    found = search(jobs[0], setup)
    contexts = [c["context"] for c in found["candidates"]]
    assert len(contexts) == len(set(contexts)) and len(contexts) < len(jobs[0].candidates)
