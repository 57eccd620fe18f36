"""Text tasks: reference cross-entropy equals training's held-out loss, outputs come from the engine, metrics
come from sacrebleu and rouge-score, and a LoRA injected into the base scores as PEFT's own model."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF

from softprompt.core.data import tokenize_rows
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.generate import GenerateConfig, generate
from softprompt.measuring.generation import Writer, items, metric_of, reference_nll, row_stats, scores
from softprompt.measuring.methods.search import data_config
from softprompt.measuring.presets import load_preset, load_test_rows, load_train_rows
from softprompt.training.heldout import mean_token_loss
from tests.measuring.text_helpers import tiny_text_dir


@pytest.fixture
def text_task(tmp_path):
    data, path = tiny_text_dir(tmp_path / "data")
    return load_preset(str(path)), data


def test_items_group_references_of_one_input(text_task):
    preset, data = text_task
    train = items(preset, load_train_rows(preset, data), "row")
    assert len(train) == 8 and all(len(item.references) == 2 for item in train)  # two rows per tripleset
    test = items(preset, load_test_rows(preset, data), "row")
    assert [len(item.references) for item in test] == [2] * 5 and test[0].text.startswith("Facts: thing 0")


def test_reference_ce_is_the_loss_training_reports(llama, text_task):
    """One concept: a prompt's reference cross-entropy through the engine's scorer is the loop's held-out loss."""
    preset, data = text_task
    rows = load_train_rows(preset, data)[:6]
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM), seed=1)

    setup = SimpleNamespace(max_length=64, data=str(data))
    examples = tokenize_rows(preset.with_target(rows, "row"), data_config(setup, preset), llama.tokenizer)
    expected = mean_token_loss(model, examples, batch_size=4)
    prompt = model.require_prompt().frozen()
    inputs = [items(preset, [row], "row")[0] for row in rows]  # one input per row: the same rows as training
    nll = reference_nll(Writer(llama, [prompt, None]), preset, inputs, max_length=64, batch_size=2)
    assert nll.shape == (2, 6, 2)
    assert nll[0, :, 0].sum() / nll[0, :, 1].sum() == pytest.approx(expected, rel=1e-4)
    assert nll[1, :, 0].sum() / nll[1, :, 1].sum() != pytest.approx(expected, rel=1e-4)  # the bare member differs


def test_writer_outputs_are_the_engines_generations(llama, text_task):
    preset, _ = text_task
    prompt = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM), seed=2)
    vectors = prompt.require_prompt().frozen()
    texts = ["Facts: a | b | c\nSentence:", "Facts: x\nSentence:"]
    written = Writer(llama, [vectors, None], context="Say.\n\n").write(texts, preset)
    config = GenerateConfig(max_new_tokens=preset.max_new_tokens, stop=preset.stop)
    with torch.inference_mode():
        expected = generate(llama, ["Say.\n\n" + t for t in texts], vectors, config)
        bare = generate(llama, ["Say.\n\n" + t for t in texts], None, config)
    assert written == [[t.strip() for t in expected], [t.strip() for t in bare]]
    assert all("\n" not in out for member in written for out in member)  # the stop rule cut them


def test_metrics_are_sacrebleus_and_resample_by_input():
    outputs = ["the cat sat on the mat", "a dog barks", "nothing alike"]
    refs = [["the cat sat on the mat", "a cat sat"], ["the dog barks"], ["something else", "other", "third"]]
    stats = {"nll": np.array([[2.0, 4.0], [3.0, 2.0], [1.0, 2.0]]), **row_stats(outputs, refs)}
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(3)]
    found = scores(stats)
    assert found["bleu"] == pytest.approx(BLEU().corpus_score(outputs, streams).score)
    assert found["chrf"] == pytest.approx(CHRF().corpus_score(outputs, streams).score)
    assert found["ce"] == pytest.approx(6.0 / 8.0) and found["ppl"] == pytest.approx(math.exp(0.75))
    assert found["rougeL"] == pytest.approx(100 * np.mean([1.0, stats["rougeL"][1], 0.0]))
    first = metric_of("bleu", stats)(np.array([0, 0]))  # a resample: the first input twice
    assert first == pytest.approx(BLEU().corpus_score(outputs[:1] * 2, [refs[0][:1] * 2, refs[0][1:] * 2]).score)


def test_lora_injected_into_the_base_scores_as_peft(llama):
    """LoRA and full fine-tuning write through the engine on the base whose modules they changed."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(llama.model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, lora_dropout=0.0))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # B starts at zero: make the update real
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = peft_model(input_ids=ids, attention_mask=mask).logits[:, -2:].float()
        got = Writer(llama).scorer().logits(ids, mask, 2).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
