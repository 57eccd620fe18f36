"""eval, compare and inspect through the CLI, in-process."""

import json

from softprompt.cli.main import main
from tests.measuring.compare_helpers import tiny_task_dir


def test_eval_compare_inspect(tiny_dirs, tmp_path, capsys):
    data = tiny_task_dir(tmp_path / "data")
    model = str(tiny_dirs["llama"])
    out = tmp_path / "cmp"
    task = ["--model", model, "--preset", "twitter_complaints", "--data", str(data)]
    search = "--pt-inits text labels --pt-lengths 2 3 --pt-lrs 0.1 --pt-reparam 0 --search-budget 3 --seeds 2"
    budget = "--budget 1 --eval-every 1 --no-isolate --cv-below 0 --methods zero-shot prompt-tuning lora"
    assert main(["compare", *task, "--output", str(out), *search.split(), *budget.split()]) == 0
    assert "goal:" in capsys.readouterr().out
    adapters = sorted(str(p) for p in (out / "runs" / "prompt-tuning").glob("*"))
    assert len(adapters) == 3 + 1  # three candidates with the first seed, the chosen one with the second

    evaluate = ["eval", *task, "--json"]
    assert main([*evaluate, "--adapter", *adapters, "--vote", "majority"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 10 and len(result["members"]) == 4 and 0 <= result["accuracy"] <= 1

    assert main([*evaluate, "--shots", "2", "--exact-match"]) == 0
    assert "exact_match" in json.loads(capsys.readouterr().out)

    assert main([*evaluate, "--peft-adapter", str(out / "runs" / "lora" / "candidate0"), "--exact-match"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 10

    text = tmp_path / "text.csv"
    text.write_text("prompt\nhello there general\nanother line of text\n")
    assert main(["eval", "--model", model, "--data", str(text), "--adapter", adapters[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 1

    assert main(["inspect", "--model", model, *adapters, "--top-k", "2"]) == 0
    shown = capsys.readouterr().out
    assert "nearest 2 tokens" in shown and "cross-prompt similarity" in shown


def test_compare_needs_preset_and_data(capsys):
    assert main(["compare", "--budget", "1"]) == 2
    assert "needs --preset and --data" in capsys.readouterr().err
