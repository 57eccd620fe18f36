"""compare on a text task end to end on a tiny model: grouped validation, every kind of method, metrics with
intervals, outputs side by side (escaped), the test file read once after every choice."""

import json
from pathlib import Path

from softprompt.measuring.compare import CompareConfig, compare, plan
from softprompt.measuring.methods import Kind
from softprompt.measuring.methods.run import RunSetup
from softprompt.measuring.report_records import TextRow
from tests.measuring.text_helpers import tiny_text_dir

SMALL = dict(seeds=2, search_budget=2, eval_every=1, patience=2, pt_lengths=(2,), pe_shots=(1,), pe_orders=1)
METHODS = ("zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "lora")


def _setup(tiny_dirs, tmp_path, **preset):
    data, path = tiny_text_dir(tmp_path / "data", **preset)
    return RunSetup(
        model=str(tiny_dirs["llama"]),
        preset=str(path),
        data=str(data),
        output=str(tmp_path / "out"),
        budget=2,
        batch_size=4,
    )


def test_validation_keeps_each_input_whole_and_drops_the_label_init(tiny_dirs, tmp_path):
    setup = _setup(tiny_dirs, tmp_path)
    _, split, jobs = plan(setup, CompareConfig(pt_inits=("labels", "text"), **SMALL))
    rows = [json.loads(line) for line in (Path(setup.data) / "train.jsonl").read_text().splitlines()]
    validating = {rows[i]["triples"] for i in split.validation}
    assert validating and not validating & {rows[i]["triples"] for i in split.train}
    assert all(c.init == "text" for job in jobs for c in job.candidates if c.kind.value == "prompt-tuning")


def test_compare_on_a_text_task(tiny_dirs, tmp_path):
    setup = _setup(tiny_dirs, tmp_path)
    report = compare(setup, CompareConfig(methods=METHODS, isolate=False, joint=False, **SMALL))
    assert all(isinstance(m, TextRow) for m in report.methods), [getattr(m, "error", "") for m in report.methods]
    by_kind = {m.kind: m for m in report.methods}
    assert report.test_rows == 5 and report.references_per_input == 2.0
    for m in report.methods:
        for name in ("ce", "bleu", "chrf", "rougeL"):
            found = m.tested.scores[name]
            assert found.ci[0] <= found.mean + 1e-9 and found.mean <= found.ci[1] + 1e-9, (m.kind, name)
        assert len(m.tested.outputs) == 2 and len(m.tested.showcase) == 1
    tuned = by_kind[Kind.PROMPT_TUNING]
    assert len(tuned.tested.scores["bleu"].runs) == 2 and {"val_bleu", "val_ce"} <= set(tuned.selected.validation)
    assert all(c.curve[0].score is not None for c in tuned.selected.candidates)  # step, seconds, loss, val BLEU
    assert [g.goal.split(" (")[0] for g in report.goals] == ["best soft prompt"] * 2
    out = Path(setup.output)
    for name in ("report.md", "report.json", "report.png", "report.html", "selection.json"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "## Outputs side by side" in md and "name[Blue Spice] [/b]" in md and "| prompt tuning |" in md


def test_few_shot_on_a_text_task_reports_the_context_validation_chose(tiny_dirs, tmp_path):
    """The row's primary metric is the chosen context's alone; the other draw is listed beside it, with its own."""
    setup = _setup(tiny_dirs, tmp_path)
    report = compare(setup, CompareConfig(methods=("few-shot",), isolate=False, **SMALL))  # two seeds: two draws
    (row,) = report.methods
    out = Path(setup.output)
    tested = json.loads((out / "results" / "few-shot.test.json").read_text())
    (chosen,) = tested["runs"]
    (other,) = tested["draw_runs"]
    (selected,) = json.loads((out / "selection.json").read_text())["methods"]
    bleu = row.tested.scores["bleu"]
    assert list(bleu.runs) == [chosen["bleu"]] and bleu.std == 0
    assert list(row.tested.outputs) == chosen["outputs"][:2]  # side by side: the chosen context's outputs
    assert [r["seed"] for r in selected["runs"]] == [chosen["seed"]] and selected["draws"][0]["seed"] == other["seed"]
    draws = row.tested.draws
    assert draws.metric == "bleu" and [d.test["bleu"] for d in draws.runs] == [chosen["bleu"], other["bleu"]]
    assert [d.chosen for d in draws.runs] == [True, False] and "val_bleu" in draws.runs[1].validation
    assert f"few-shot: validation chose draw {chosen['seed']}" in (out / "report.md").read_text()


def test_no_joint_changes_only_the_soft_prompt_jobs(tiny_dirs, tmp_path):
    """--no-joint trains soft-prompt candidates one at a time; every other method's finished phase stays reusable."""
    from softprompt.measuring.compare import _job_json

    setup = _setup(tiny_dirs, tmp_path)
    _, _, together = plan(setup, CompareConfig(methods=METHODS, **SMALL))
    _, _, alone = plan(setup, CompareConfig(methods=METHODS, joint=False, **SMALL))
    for a, b in zip(together, alone, strict=True):
        same = _job_json(a) == _job_json(b)
        assert same == (a.kind.value not in ("prompt-tuning", "prefix-tuning")), a.kind
