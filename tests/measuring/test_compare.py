"""compare end to end on a tiny model: every method, the ensemble, the report files, resuming."""

import json

from softprompt.measuring.compare import CompareConfig, compare, method_specs
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.run import RunSetup
from tests.measuring.compare_helpers import tiny_task_dir


def _setup(tiny_dirs, tmp_path, **kw):
    data = tiny_task_dir(tmp_path / "data")
    return RunSetup(model=str(tiny_dirs["llama"]), preset="twitter_complaints", data=str(data),
                    output=str(tmp_path / "out"), budget=2, batch_size=4, **kw)  # fmt: skip


def test_method_specs_cover_every_method():
    specs = method_specs(CompareConfig(extra_lengths=(5,), slow_test_rows=3))
    kinds = {s.kind for s in specs}
    assert kinds == set(Kind)
    assert [s.init for s in specs if s.kind is Kind.PROMPT_TUNING] == ["random", "vocab", "text", "labels", "random"]
    assert next(s for s in specs if s.kind is Kind.FEW_SHOT).test_rows == 3


def test_compare_end_to_end(tiny_dirs, tmp_path):
    setup = _setup(tiny_dirs, tmp_path)
    config = CompareConfig(isolate=False, prompt_length=3, inits=("text", "labels"), extra_lengths=(2,), shots=2,
                           slow_test_rows=4)  # fmt: skip
    report = compare(setup, config)
    names = [m["name"] for m in report["methods"]]
    assert "zero-shot instruction" in names and "LoRA (r=8)" in names and "full fine-tuning" in names
    assert all("error" not in m for m in report["methods"]), report["methods"]
    by_name = {m["name"]: m for m in report["methods"]}
    assert by_name["2-shot"]["eval_rows"] == 4 and by_name["prompt tuning (text, 3)"]["eval_rows"] == 10
    assert by_name["prompt tuning (text, 3)"]["trainable_params"] == 3 * 32
    assert by_name["P-tuning (text, 3)"]["stored_params"] == 3 * 32
    assert report["ensemble"]["members"] == ["prompt tuning (text, 3)", "prompt tuning (labels, 3)",
                                             "prompt tuning (text, 2)"]  # fmt: skip
    out = tmp_path / "out"
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "| prompt tuning (labels, 3) | prompt tuning |" in md and "## Goals" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["goals"] and "scores" not in saved["methods"][0]
    # A second run reuses every finished method instead of training again.
    again = compare(setup, config)
    assert [m["accuracy"] for m in again["methods"]] == [m["accuracy"] for m in report["methods"]]


def test_isolated_method_measures_peak_rss(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _run_one

    setup = _setup(tiny_dirs, tmp_path)
    result = _run_one(MethodSpec(Kind.PROMPT_TUNING, lr=0.1, num_virtual_tokens=2, init="random"), setup, isolate=True)
    assert "error" not in result, result
    assert result["peak_rss_mb"] > 10 and result["train_steps"] == 2
    assert (tmp_path / "out" / "adapters" / "prompt_tuning_random_2" / "adapter_config.json").is_file()


def test_failed_method_is_reported_not_fatal(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _run_one

    setup = _setup(tiny_dirs, tmp_path)
    bad = RunSetup(**{**setup.__dict__, "model": str(tmp_path / "no-model")})
    result = _run_one(MethodSpec(Kind.ZERO_SHOT), bad, isolate=True)
    assert "error" in result and "no-model" in result["error"]


def test_prompt_engineering_results_are_shared_across_budgets(tiny_dirs, tmp_path):
    from softprompt.measuring.compare import _same_job

    setup = _setup(tiny_dirs, tmp_path)
    bigger = RunSetup(**{**setup.__dict__, "budget": 50, "output": str(tmp_path / "other")})
    job = {"spec": MethodSpec(Kind.ZERO_SHOT).__dict__, "setup": setup.__dict__}
    other = {"spec": MethodSpec(Kind.ZERO_SHOT).__dict__, "setup": bigger.__dict__}
    assert _same_job(job, other, MethodSpec(Kind.ZERO_SHOT))
    lora = MethodSpec(Kind.LORA, lr=0.01)
    assert not _same_job(
        {"spec": lora.__dict__, "setup": setup.__dict__}, {"spec": lora.__dict__, "setup": bigger.__dict__}, lora
    )
