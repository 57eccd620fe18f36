"""The comparison's methods: shared fit loop, HF loss, P-tuning folding and resuming."""

import torch

from softprompt.core.data import Example, collate
from softprompt.core.inject import IGNORE_INDEX
from softprompt.measuring.methods.fit import FitConfig, fit, hf_loss
from softprompt.measuring.methods.ptuning import ReparamPrompt


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
    weight = torch.nn.Parameter(torch.zeros(4, llama.hidden_size))
    from softprompt.measuring.methods.build import prompt_loss

    loss_fn = prompt_loss(llama, lambda: weight)
    result = fit([weight], loss_fn, _examples() * 4, FitConfig(steps=12, lr=0.1, batch_size=4), 256)
    assert result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < result.losses[0]


def test_p_tuning_starts_at_its_init_folds_and_resumes(tmp_path):
    init = torch.randn(3, 16)
    reparam = ReparamPrompt(init, hidden=8)
    torch.testing.assert_close(reparam(), init)  # zero-initialised last layer
    with torch.no_grad():
        reparam.mlp[2].weight.normal_()
    folded = reparam.folded()
    assert not folded.requires_grad and folded.shape == (3, 16)
    reparam.save_state(tmp_path)
    resumed = ReparamPrompt.load_state(tmp_path)
    torch.testing.assert_close(resumed.folded(), folded)
