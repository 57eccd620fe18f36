"""A model trained through its own weights (LoRA, full fine-tuning): its loss, and the one training loop."""

import pytest
import torch

from softprompt.core.data import Example, collate
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.weights import WeightsModel
from softprompt.training.train import TrainConfig, train


def _examples():
    return [Example([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]), Example([9, 7, 8], [IGNORE_INDEX, 7, 8])]


def _head_only(base) -> WeightsModel:
    """The LM head as the only trainable weight: a small stand-in for LoRA's matrices."""
    base.model.get_output_embeddings().weight.requires_grad_(True)
    return WeightsModel(base, base.model, "head")


def test_loss_matches_full_logits(tiny):
    batch = collate(_examples(), 256)
    total, count = WeightsModel(tiny, tiny.model, "bare").loss(batch.input_ids, batch.attention_mask, batch.labels)
    extra = {"position_ids": (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)} if tiny.accepts_position_ids else {}
    logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert count == 4
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture
def head_model(llama):
    return _head_only(llama)  # a fresh load per test: training changes its weights


def test_weights_train_in_the_loop_lowering_the_loss_within_the_budget(head_model, tmp_path):
    config = TrainConfig(output=str(tmp_path), lr=0.01, max_steps=12, batch_size=4, progress=False, checkpoints=False)
    result = train(head_model, _examples() * 4, _examples(), config)
    losses = [r["loss"] for r in result.records if "loss" in r]
    assert result.metrics["optimizer_steps"] == 12 and len(losses) == 12
    assert losses[-1] < losses[0]
    assert result.metrics["trainable_params"] == head_model.base.model.get_output_embeddings().weight.numel()
    assert (tmp_path / "config.json").is_file()  # saved in its library's format (here: the whole model)


def test_early_stopping_keeps_the_best_weights(head_model, tmp_path):
    validation = [Example([9, 9, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 5, 6])]  # unlike training: it gets worse
    config = TrainConfig(
        output=str(tmp_path),
        lr=0.5,
        max_steps=40,
        epochs=0,
        batch_size=4,
        eval_every=2,
        early_stopping=2,
        scheduler="constant",
        progress=False,
        checkpoints=False,
    )
    result = train(head_model, _examples() * 4, validation, config)
    curve = [(r["step"], r["eval_loss"]) for r in result.records if r.get("eval_loss") is not None]
    assert [step for step, _ in curve][:3] == [0, 2, 4]
    assert result.metrics["stopped_early"] and result.metrics["optimizer_steps"] < 40
    with torch.no_grad():
        batch = collate(validation, 256)
        total, count = head_model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    best = min(loss for _, loss in curve)
    assert float(total / count) == pytest.approx(best, rel=1e-5)  # the best weights came back
