"""Text shown is text, never markup (issue 26): prompts, outputs, paths and tokens print as written.

Rich reads a str as console markup: ``eatType[coffee shop]`` loses its value, ``[/b]`` raises MarkupError,
``[bold]`` disappears and ``:coffee:`` becomes an emoji. Each command that prints user or model text is
sent such text here; the slow library call behind a command is replaced where its output is all that matters.
"""

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from softprompt.cli.main import main
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.demo import DemoReport
from tests.conftest import load_tiny

TEXTS = ["name[Blue Spice], eatType[coffee shop]", "[/b]", "[bold]not bold[/bold]", "a :coffee: break"]
METRICS = {
    "heldout_loss_before": 2.0,
    "heldout_loss_after": 1.0,
    "eval_rows": 3,
    "train_seconds": 1.0,
    "train_tokens_per_second": 10.0,
    "batch_size": 2,
}


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # off a terminal rich wraps at 80 columns: each text kept on one line


@pytest.fixture(scope="module")
def adapters(tiny_dirs, tmp_path_factory) -> list[str]:
    """Two adapters in directories named with brackets ("[bold]not bold[/bold]" is two nested folders)."""
    base = load_tiny(tiny_dirs, "llama")
    root = tmp_path_factory.mktemp("adapters")
    dirs = []
    for seed, name in enumerate((TEXTS[0], TEXTS[2])):
        model = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=2, init="random"), seed=seed)
        dirs.append(str(model.save_pretrained(root / name)))
    return dirs


def _shown(out: str, *texts: str, times: int = 1) -> None:
    for text in texts:
        assert out.count(text) >= times, f"{text!r} not shown {times}x in:\n{out}"


def _titled(out: str, title: str) -> None:
    """A table's title wraps at the table's width, wherever that falls: compared without whitespace."""
    assert "".join(title.split()) in "".join(out.split()), f"{title!r} not the title in:\n{out}"


def _echo(monkeypatch) -> None:
    """The model answers each prompt with the prompt itself: bracketed model output."""
    cli = importlib.import_module("softprompt.cli.main")  # softprompt.cli.main is also the function main
    monkeypatch.setattr(cli, "generate", lambda base, prompts, prompt, config: list(prompts))


def test_generate_prints_outputs_as_written(tiny_dirs, adapters, monkeypatch, capsys):
    _echo(monkeypatch)
    assert main(["generate", "--model", str(tiny_dirs["llama"]), "--adapter", adapters[0], *TEXTS]) == 0
    _shown(capsys.readouterr().out, *TEXTS)


def test_generate_side_by_side_prints_prompts_outputs_and_adapter_as_written(tiny_dirs, adapters, monkeypatch, capsys):
    _echo(monkeypatch)
    argv = ["generate", "--model", str(tiny_dirs["llama"]), "--adapter", adapters[1], "--side-by-side", *TEXTS]
    assert main(argv) == 0
    out = capsys.readouterr().out
    _shown(out, *TEXTS, times=3)  # prompt, base model, with the adapter
    _shown(out, f"with {adapters[1]}")


def test_generate_side_by_side_with_the_model(tiny_dirs, adapters, capsys):
    """The report as a new user met it: a real generation after a bracketed prompt."""
    argv = ["generate", "--model", str(tiny_dirs["llama"]), "--adapter", adapters[0], "--side-by-side"]
    assert main([*argv, "--max-new-tokens", "2", *TEXTS]) == 0
    _shown(capsys.readouterr().out, *TEXTS, f"with {adapters[0]}")


def test_train_prints_the_output_path_as_written(tiny_dirs, tmp_path, monkeypatch, capsys):
    import softprompt.training.train as train

    out = tmp_path / TEXTS[2]
    monkeypatch.setattr(train, "tune", lambda *args, **kwargs: SimpleNamespace(metrics=METRICS, output=out))
    assert main(["train", "--model", str(tiny_dirs["llama"]), "--output", str(out), "--no-progress"]) == 0
    _shown(capsys.readouterr().out, f"adapter saved to {out}")


def test_export_prints_the_prompt_adapter_and_paths_as_written(tiny_dirs, adapters, tmp_path, capsys):
    model = ["--model", str(tiny_dirs["llama"]), "--adapter", adapters[1]]
    file = tmp_path / TEXTS[0] / "embeds.safetensors"
    assert main(["export", *model, TEXTS[1], "--output", str(file)]) == 0
    _shown(capsys.readouterr().out, f"for '{TEXTS[1]}' saved to {file}")
    folder = tmp_path / TEXTS[2]
    assert main(["export", *model, "--to", "peft-prefix", "--output", str(folder)]) == 0
    _shown(capsys.readouterr().out, f"{adapters[1]} as a PEFT prefix-tuning adapter saved to {folder}")


def test_demo_prints_query_outputs_notes_and_adapter_as_written(tmp_path, monkeypatch, capsys):
    import softprompt.demo as demo

    adapter = tmp_path / "[bold]adapter[/bold]"

    def run_demo(notify, **kwargs):
        notify(TEXTS[3])
        return DemoReport(TEXTS[0], TEXTS[1], TEXTS[2], METRICS, adapter, {"load model": 0.5})

    monkeypatch.setattr(demo, "run_demo", run_demo)
    assert main(["demo", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    _titled(out, f"Prompt: '{TEXTS[0]}'")
    _shown(out, TEXTS[3], TEXTS[1], TEXTS[2], f"adapter saved to {adapter}")


def test_compare_prints_its_report_goals_and_output_as_written(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import softprompt.measuring.compare as compare
    from softprompt.measuring.report_records import Goal

    def fake_compare(setup, config):
        Path(setup.output).mkdir(parents=True)
        Path(setup.output, "report.md").write_text("\n".join(TEXTS), encoding="utf-8")
        goal = Goal(goal=TEXTS[1], value=1.0, met=True, text=TEXTS[0])
        return SimpleNamespace(kind="labels", goals=(goal,))  # the fields of a LabelReport the command reads

    monkeypatch.setattr(compare, "compare", fake_compare)
    out = tmp_path / TEXTS[2]
    argv = ["compare", "--preset", "twitter_complaints", "--data", str(tmp_path), "--output", str(out)]
    assert main(argv) == 0
    _shown(capsys.readouterr().out, *TEXTS, f"goal: {TEXTS[1]}: {TEXTS[0]}", f"report written to {out}")


def test_eval_prints_data_and_members_as_written(tiny_dirs, adapters, tmp_path, monkeypatch, capsys):
    import softprompt.measuring.evaluate as evaluate

    members = [{"adapter": a, "accuracy": 0.5, "macro_f1": 0.25} for a in adapters]
    monkeypatch.setattr(
        evaluate, "evaluate_task", lambda base, config: {"rows": 3, "accuracy": 0.5, "members": members}
    )
    data = tmp_path / TEXTS[0] / "rows.csv"
    data.parent.mkdir()
    data.write_text("prompt\nhello\n")
    assert main(["eval", "--model", str(tiny_dirs["llama"]), "--data", str(data), "--adapter", *adapters]) == 0
    out = capsys.readouterr().out
    _titled(out, f"eval: {data} (3 rows)")
    _shown(out, *(f"member {a}: accuracy 0.5000" for a in adapters))


def test_inspect_prints_adapters_and_tokens_as_written(tiny_dirs, adapters, monkeypatch, capsys):
    import softprompt.measuring.inspect as inspect

    real = inspect.inspect_prompts

    def bracketed(*args, **kwargs):
        """The real report, its nearest tokens renamed (the byte tokenizer's are single bytes) and layers added."""
        report = real(*args, **kwargs)
        for prompt in report.prompts:
            prompt.layer_norms = [1.0, 2.0]
            for token in prompt.tokens:
                token.nearest = [(text, cos) for text, (_, cos) in zip(TEXTS, token.nearest)]
        return report

    monkeypatch.setattr(inspect, "inspect_prompts", bracketed)
    assert main(["inspect", "--model", str(tiny_dirs["llama"]), *adapters, "--top-k", str(len(TEXTS))]) == 0
    out = capsys.readouterr().out
    _shown(out, *(repr(t) for t in TEXTS), times=2 * len(adapters))  # 2 virtual tokens per adapter
    for a in adapters:
        _titled(out, f"{a}: prompt tuning (mean norm")
    _shown(out, *(f"{a}: key/value norm per layer" for a in adapters))
    _shown(out, *(f"{i}: {a}" for i, a in enumerate(adapters)))
