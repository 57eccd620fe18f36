"""Every speed-up computes the same loss and gradient as the plain injected layout."""

import pytest
import torch

from softprompt.data import Example, batches
from softprompt.inject import IGNORE_INDEX
from softprompt.model import SoftPromptModel
from softprompt.prompt import Init, PromptConfig

TEXTS = ["hi", "a much longer input row of text", "mid size row", "x"]


def _examples(tokenizer, supervised: bool) -> list[Example]:
    out = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        labels = [IGNORE_INDEX] * (len(ids) - 1) + ids[-1:] if supervised else list(ids)
        out.append(Example(ids, labels))
    return out


def _loss_and_grad(model: SoftPromptModel, examples: list[Example], share: bool) -> tuple[float, int, torch.Tensor]:
    model.share_prompt_kv = share
    prompt = model.require_prompt()
    prompt.embedding.grad = None
    total, count = 0.0, 0
    for batch in batches(examples, 3, model.base.tokenizer.pad_token_id, group_by_length=False):
        loss, n = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
        loss.backward()
        total, count = total + float(loss.detach()), count + n
    assert prompt.embedding.grad is not None
    return total, count, prompt.embedding.grad.clone()


@pytest.mark.parametrize("supervised", [False, True])
def test_shared_prompt_kv_equals_plain_layout(tiny, supervised):
    """Prompt keys/values computed once and shared across rows: same loss, count and gradient."""
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    examples = _examples(tiny.tokenizer, supervised)
    plain = _loss_and_grad(model, examples, share=False)
    shared = _loss_and_grad(model, examples, share=True)
    assert shared[1] == plain[1]
    assert shared[0] == pytest.approx(plain[0], rel=1e-5)
    torch.testing.assert_close(shared[2], plain[2], atol=1e-5, rtol=1e-4)


def test_first_token_is_scored_from_the_last_virtual_token(llama):
    """A row with no padding still has its first token predicted (by the prompt's last state)."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM))
    ids = torch.tensor([[5, 6, 7]])
    _, count = model.loss(ids, torch.ones_like(ids), ids.clone())
    assert count == 3


def test_fused_head_cross_entropy_equals_plain(llama):
    """LinearCrossEntropy: same summed loss and d loss / d hidden as logits + F.cross_entropy."""
    from softprompt.model import FUSED_CHUNK, LinearCrossEntropy

    weight = llama.model.get_output_embeddings().weight
    rows = FUSED_CHUNK + 7  # more than one chunk
    hidden = torch.randn(rows, weight.shape[1], requires_grad=True)
    targets = torch.randint(weight.shape[0], (rows,))
    fused = LinearCrossEntropy.apply(hidden, weight, targets)
    (grad_fused,) = torch.autograd.grad(2 * fused, hidden)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (grad_plain,) = torch.autograd.grad(2 * plain, hidden)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(LinearCrossEntropy.apply(hidden, weight, targets), plain.detach())


@pytest.mark.parametrize("max_tokens", [1, 12, 10_000])
def test_sliced_backward_equals_one_pass(llama, max_tokens):
    """Row slices under a token budget, each trimmed to its longest row: same mean loss and gradient."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    batch = next(batches(_examples(llama.tokenizer, False), 4, llama.tokenizer.pad_token_id))
    prompt = model.require_prompt()
    loss, count = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    (loss / count / 2).backward()
    assert prompt.embedding.grad is not None
    expected = prompt.embedding.grad.clone()
    prompt.embedding.grad = None
    mean, sliced_count, slots = model.backward_mean_loss(
        batch.input_ids, batch.attention_mask, batch.labels, scale=0.5, max_tokens=max_tokens
    )
    assert sliced_count == count and slots <= batch.input_ids.numel()
    assert mean == pytest.approx(float(loss) / count, rel=1e-5)
    torch.testing.assert_close(prompt.embedding.grad, expected, atol=1e-6, rtol=1e-4)
