"""The CLI in-process: thin wrappers over the library, one-line errors, non-zero exit codes."""

import json

import pytest

from softprompt.cli.main import main


def _train_args(model_dir, tmp_path, *extra):
    return [
        "train",
        "--model",
        str(model_dir),
        "--limit",
        "8",
        "--eval-rows",
        "3",
        "--max-length",
        "24",
        "--num-virtual-tokens",
        "2",
        "--init",
        "random",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
        *extra,
    ]


def test_train_then_generate(tiny_dirs, tmp_path, capsys):
    assert main(_train_args(tiny_dirs["llama"], tmp_path)) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_rows"] == 8 and metrics["eval_rows"] == 3
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_dirs["llama"]),
                "--adapter",
                str(tmp_path / "out"),
                "--max-new-tokens",
                "4",
                "hello",
                "world",
            ]
        )
        == 0
    )
    assert "adapter saved to" in capsys.readouterr().out


def test_library_lists_prompts_and_train_starts_from_one(tiny_dirs, tmp_path, capsys):
    assert main(_train_args(tiny_dirs["llama"], tmp_path)) == 0  # tmp_path/out: a one-prompt library
    capsys.readouterr()
    assert main(["library", str(tmp_path), "--model", str(tiny_dirs["llama"])]) == 0
    shown = capsys.readouterr().out
    assert "out" in shown and "vectors" in shown and "loss" in shown
    again = _train_args(tiny_dirs["llama"], tmp_path / "second")
    assert main([*again, "--init", f"library:{tmp_path / 'out'}"]) == 0
    started = json.loads((tmp_path / "second" / "out" / "metrics.json").read_text())["init_from"]
    assert started["chosen"] == str(tmp_path / "out") and started["scored"] == 1
    assert main(["library", str(tmp_path / "second" / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["library", str(tmp_path), "--model", str(tiny_dirs["qwen2"])]) == 2
    err = capsys.readouterr().err
    assert "softprompt: error: adapter" in err and "a library serves prompts of its own base model" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["generate", "--model", "no-such-org/no-such-model-xyz", "hi"],
            "cannot load model 'no-such-org/no-such-model-xyz'",
        ),
        (["generate", "--model", "/nonexistent/model.gguf", "hi"], "GGUF file not found"),
        (["generate", "--model", "{llama}", "--adapter", "/nonexistent", "hi"], "adapter directory not found"),
        (["generate", "--model", "{llama}", "--max-new-tokens", "0", "hi"], "max_new_tokens must be between 1 and"),
        (["train", "--model", "{llama}", "--num-virtual-tokens", "0"], "num_virtual_tokens must be between 1 and"),
        (["train", "--model", "{llama}", "--num-virtual-tokens", "-2"], "num_virtual_tokens must be between 1 and"),
        (["train", "--model", "{llama}", "--text-column", "missing", "--output", "{out}"], "no column 'missing'"),
        (["train", "--model", "{llama}", "--data", "/nonexistent.csv", "--output", "{out}"], "dataset file not found"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(tiny_dirs, tmp_path, capsys, args, message):
    args = [a.format(llama=tiny_dirs["llama"], out=tmp_path / "o") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("softprompt: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/nonexistent.csv", "--output", "{out}"], "--data: dataset file not found"),
        (
            ["train", "--init", "file", "--init-file", "/nope", "--output", "{out}"],
            "--init-file: adapter directory not found",
        ),
        (["serve", "--adapters", "/nonexistent-adapters"], "--adapters: adapters directory not found"),
        (["generate", "--adapter", "/nonexistent", "hi"], "adapter directory not found"),
        (["export", "--adapter", "/nonexistent", "--to", "peft-prefix"], "adapter directory not found"),
        (["eval", "--data", "/nonexistent", "--preset", "sst2"], "--data: the preset's data directory not found"),
        (["inspect", "/nonexistent"], "adapter directory not found"),
    ],
)
def test_paths_are_checked_before_any_model_loads(monkeypatch, tmp_path, capsys, args, message):
    """With a 7B model a typo must not cost a load: these fail with the model loader made to explode."""
    import softprompt.core.loading as models

    def explode(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "load_base_model", explode)
    monkeypatch.setattr(models, "_resolve", explode)
    assert main([a.format(out=tmp_path / "o") for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("softprompt: error:") and message in err[-1], err[-1]


def test_every_command_has_help(capsys):
    for command in ("train", "generate", "demo"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    assert "--num-virtual-tokens" in capsys.readouterr().out


def test_the_old_sampling_switch_says_what_replaced_it(capsys):
    """--do-sample went with the second temperature convention: an old command line is told, not just refused."""
    with pytest.raises(SystemExit):
        main(["generate", "hi", "--do-sample"])
    assert "--temperature above 0 samples, 0 (the default) is greedy" in capsys.readouterr().err


PARSED_BEFORE = [  # command lines of the documented options before issue 23: they parse to the same configs
    (
        "train --limit 50 --num-virtual-tokens 8 --init text --lr 0.03 --epochs 5 --output o --batch-size 4 "
        "--grad-accum 2 --scheduler cosine --warmup-ratio 0.1 --early-stopping 2 --eval-every 5 --model-dtype float32"
    ),
    (
        "compare --preset sst2 --data d --budget 40 --search-budget 4 --seeds 3 --eval-every 10 --patience 2 "
        "--val-max-rows 200 --test-rows 1000 --eval-batch-size 32 --pt-lengths 10 20 --pt-lrs 0.3 0.1 "
        "--lora-ranks 4 8 --pt-inits labels text --methods zero-shot prompt-tuning lora"
    ),
    "eval --preset sst2 --data d --adapter a --adapter b --vote majority --shots 2",
    "serve --adapters a --port 9000 --max-batch-size 8 --max-loaded-bytes 1000",
    "export --adapter a --to vllm-prompt-embeds --output x.safetensors hello",
]


@pytest.mark.parametrize("line", PARSED_BEFORE)
def test_options_documented_before_still_parse_to_the_same_values(line):
    from softprompt.cli.main import build_parser

    args = build_parser().parse_args(line.split())
    if args.command == "compare":
        from softprompt.cli.args import config_from_args
        from softprompt.measuring.compare import CompareConfig

        config = config_from_args(CompareConfig, args)
        assert config.pt_lengths == (10, 20) and config.pt_lrs == (0.3, 0.1) and config.lora_ranks == (4, 8)
        assert config.methods == ("zero-shot", "prompt-tuning", "lora") and args.budget == 40
    if args.command == "train":
        from softprompt.cli.args import config_from_args
        from softprompt.training.train import TrainConfig

        config = config_from_args(TrainConfig, args)
        assert (config.epochs, config.grad_accum, config.scheduler, config.eval_every) == (5, 2, "cosine", 5)
