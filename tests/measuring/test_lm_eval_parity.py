"""lm-evaluation-harness parity: a prompt trained with `softprompt train`, scored on a small multiple-choice
task by lm-eval (`--model hf --model_args pretrained=BASE,peft=ADAPTER`, as users run it) and by
`softprompt eval`: the same prediction on every row, log-likelihoods equal within 1e-4.

What lm-eval 0.4.13 computes for a choice (lm_eval/api/model.py, models/huggingface.py): the context
is ``doc_to_text``; the continuation is ``target_delimiter + choice`` (" bad"); it encodes
``context + continuation`` whole and takes the tokens after ``len(encode(context))`` as the
continuation; ``encode`` uses the tokenizer's default special tokens (a BOS for tokenizers that add one), and the
answer is the summed log-probability of the continuation tokens. softprompt encodes every input
the same way (its start tokens, then the text) and scores ``" " + word`` after it, so the two agree
with and without a BOS-adding tokenizer. The model's vocabulary matches its tokenizer exactly; see
docs/results.md for lm-eval shrinking a padded vocabulary under ``peft=``.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tests.measuring.lm_eval_run import (
    LABEL_WORDS,
    TASK,
    compare,
    run_lm_eval,
    save_model,
    softprompt_eval,
    train_prompt,
    write_parity_task,
)


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def model_dir(request, tmp_path_factory):
    """A tiny llama whose vocabulary is exactly the tokenizer's; with and without a BOS-adding tokenizer.

    With ``peft=`` lm-eval resizes the embeddings to ``len(tokenizer)`` when the two differ (meant
    for LoRAs that add tokens); conftest's tiny models have one spare row, which would change
    lm-eval's softmax and nothing else.
    """
    directory = save_model(tmp_path_factory.mktemp("parity-model"), bos=request.param)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    adds_bos = tokenizer.encode("x") != tokenizer.encode("x", add_special_tokens=False)
    assert adds_bos == request.param, "premise: the tokenizer adds a BOS exactly when asked"
    return directory


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The same task for both tools: data files, a softprompt preset and an lm-eval task YAML."""
    return write_parity_task(tmp_path_factory.mktemp("parity-task"))


@pytest.fixture(scope="module")
def adapter(model_dir, task, tmp_path_factory):
    return train_prompt(model_dir, task, tmp_path_factory.mktemp("parity-adapter") / "prompt")


def test_lm_eval_and_softprompt_eval_agree_row_by_row(model_dir, task, adapter, tmp_path):
    predictions = softprompt_eval(model_dir, task, adapter, tmp_path / "softprompt.jsonl")
    samples = run_lm_eval(model_dir, adapter, task, TASK, tmp_path / "lm-eval")
    assert [s["arguments"]["gen_args_0"]["arg_1"] for s in samples[:1]] == [" bad"], "continuation = delimiter + word"
    parity = compare(predictions, samples, list(LABEL_WORDS))
    assert parity.rows == 16
    assert parity.same_prediction == parity.rows, parity.first_difference
    assert parity.worst <= 1e-4, f"largest log-likelihood difference {parity.worst:.2e}"
    # The label margin moves from row to row, so agreeing on every row is not agreeing on a constant.
    scores = [json.loads(line)["loglikelihoods"][0] for line in predictions.read_text().splitlines()]
    first, second = LABEL_WORDS
    margins = [row[first] - row[second] for row in scores]
    assert max(margins) - min(margins) > 0.1


def test_a_deep_prompt_agrees_through_peft_prefix_tuning(model_dir, task, tmp_path):
    """A deep prompt (keys/values in every layer) is a PEFT PREFIX_TUNING adapter: lm-eval scores it the same."""
    deep = train_prompt(model_dir, task, tmp_path / "deep", "--form", "kv", "--lr", "0.03")
    assert json.loads((deep / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    predictions = softprompt_eval(model_dir, task, deep, tmp_path / "softprompt.jsonl")
    parity = compare(predictions, run_lm_eval(model_dir, deep, task, TASK, tmp_path / "lm-eval"), list(LABEL_WORDS))
    assert parity.rows == 16 and parity.same_prediction == parity.rows, parity.first_difference
    assert parity.worst <= 1e-4, f"largest log-likelihood difference {parity.worst:.2e}"
