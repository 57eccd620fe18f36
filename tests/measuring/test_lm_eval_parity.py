"""lm-evaluation-harness parity: a prompt trained with `softprompt train`, scored on a small multiple-choice
task by lm-eval (`--model hf --model_args pretrained=BASE,peft=ADAPTER`, as users run it) and by
`softprompt eval`: the same prediction on every row, log-likelihoods equal within 1e-4.

What lm-eval 0.4.13 computes for a choice (lm_eval/api/model.py, models/huggingface.py): the context
is ``doc_to_text``; the continuation is ``target_delimiter + choice`` (" bad"); it encodes
``context + continuation`` whole and takes the tokens after ``len(encode(context))`` as the
continuation; ``encode`` uses the tokenizer's default special tokens (a BOS for tokenizers that add
one), and the answer is the summed log-probability of the continuation tokens. softprompt scores
``encode(" " + word)`` after ``encode(text)``, never with a BOS. Apples to apples here because the
byte tokenizer adds no special tokens and splits at every byte; see docs/results.md for the cases
where the two differ (BOS-adding tokenizers; lm-eval shrinking a padded vocabulary under ``peft=``).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from softprompt.cli.main import main
from softprompt.measuring.presets import load_preset
from tests.conftest import byte_tokenizer, tiny_config
from tests.measuring.lm_eval_run import compare, run_lm_eval, write_task

TEMPLATE = "Review: {text}\nSentiment:"
LABEL_WORDS = {"negative": "bad", "positive": "good"}
TASK = "softprompt_parity"


def _rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "boring", "dull", "weak"]
    rows = []
    for _ in range(count):
        label = rng.choice(list(LABEL_WORDS))
        word = rng.choice(good if label == "positive" else bad)
        text = f"the film was {word} and the cast {rng.choice(good + bad)}"
        rows.append({"text": text, "label": label, "word": LABEL_WORDS[label]})
    return rows


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny llama whose vocabulary is exactly the tokenizer's.

    With ``peft=`` lm-eval resizes the embeddings to ``len(tokenizer)`` when the two differ (meant
    for LoRAs that add tokens); conftest's tiny models have one spare row, which would change
    lm-eval's softmax and nothing else.
    """
    directory = tmp_path_factory.mktemp("parity-model")
    tokenizer = byte_tokenizer()
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    assert tokenizer.encode("x") == tokenizer.encode("x", add_special_tokens=False), "premise: no BOS is added"
    return directory


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The same task for both tools: data files, a softprompt preset and an lm-eval task YAML."""
    root = tmp_path_factory.mktemp("parity-task")
    _write_jsonl(root / "train.jsonl", _rows(24, seed=1))
    _write_jsonl(root / "test.jsonl", _rows(16, seed=2))
    (root / "preset.json").write_text(json.dumps({"name": TASK, "template": TEMPLATE, "label_words": LABEL_WORDS}))
    write_task(load_preset(str(root / "preset.json")), root / "test.jsonl", root, TASK)
    return root


@pytest.fixture(scope="module")
def adapter(model_dir, task, tmp_path_factory):
    output = tmp_path_factory.mktemp("parity-adapter") / "prompt"
    code = main(["train", "--model", str(model_dir), "--data", str(task / "train.jsonl"), "--template", TEMPLATE,
                 "--target-column", "word", "--num-virtual-tokens", "4", "--init", "random", "--lr", "0.1",
                 "--epochs", "3", "--output", str(output), "--no-progress"])  # fmt: skip
    assert code == 0
    return output


def test_lm_eval_and_softprompt_eval_agree_row_by_row(model_dir, task, adapter, tmp_path):
    predictions = tmp_path / "softprompt.jsonl"
    code = main(["eval", "--model", str(model_dir), "--preset", str(task / "preset.json"), "--data", str(task),
                 "--adapter", str(adapter), "--predictions", str(predictions), "--json"])  # fmt: skip
    assert code == 0
    samples = run_lm_eval(model_dir, adapter, task, TASK, tmp_path / "lm-eval")
    assert [s["arguments"]["gen_args_0"]["arg_1"] for s in samples[:1]] == [" bad"], "continuation = delimiter + word"
    parity = compare(predictions, samples, list(LABEL_WORDS))
    assert parity.rows == 16
    assert parity.same_prediction == parity.rows, parity.first_difference
    assert parity.worst <= 1e-4, f"largest log-likelihood difference {parity.worst:.2e}"
    # Both labels are predicted, so "same prediction on every row" is not met by a constant answer.
    assert {json.loads(line)["prediction"] for line in predictions.read_text().splitlines()} == set(LABEL_WORDS)


def test_predictions_need_a_classification_preset(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "x.csv"), "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert "--predictions need a classification --preset" in capsys.readouterr().err
