"""The comparison's weight-training loop and HF loss."""

import pytest
import torch

from softprompt.core.data import Example, collate
from softprompt.core.inject import IGNORE_INDEX
from softprompt.measuring.methods.fit import FitConfig, fit, hf_loss


def _examples():
    return [Example([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]), Example([9, 7, 8], [IGNORE_INDEX, 7, 8])]


def test_hf_loss_matches_full_logits(tiny):
    batch = collate(_examples(), 256)
    total, count = hf_loss(tiny.model, tiny.accepts_position_ids)(batch)
    extra = {"position_ids": (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)} if tiny.accepts_position_ids else {}
    logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert count == 4
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-4)


def test_fit_lowers_the_loss_and_keeps_the_budget(llama):
    model = llama.model
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)
    try:
        result = fit([head.weight], hf_loss(model), _examples() * 4, FitConfig(steps=12, lr=0.01, batch_size=4), 256)
    finally:
        head.weight.requires_grad_(False)
    assert result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < result.losses[0]


def test_fit_stops_on_validation_and_keeps_the_best_weights(llama):
    model = llama.model
    head = model.get_output_embeddings()
    original = head.weight.detach().clone()
    head.weight.requires_grad_(True)
    loss = hf_loss(model)
    validation = [Example([9, 9, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 5, 6])]  # unlike training: it gets worse
    try:
        config = FitConfig(steps=40, lr=0.5, batch_size=4, eval_every=2, patience=2, scheduler="constant")
        result = fit([head.weight], loss, _examples() * 4, config, 256, validation=validation)
        with torch.no_grad():
            total, count = loss(collate(validation, 256))
    finally:
        head.weight.requires_grad_(False)
        with torch.no_grad():
            head.weight.copy_(original)
    steps = [step for step, _ in result.curve]
    assert steps[0] == 0 and all(b - a == 2 for a, b in zip(steps, steps[1:]))
    assert result.stopped_early and result.steps < 40
    best = min(value for _, value in result.curve)
    assert float(total / count) == pytest.approx(best, rel=1e-5)  # the best weights came back
    assert result.best_step == min(result.curve, key=lambda p: p[1])[0]
