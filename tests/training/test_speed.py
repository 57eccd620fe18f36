"""Every speed-up computes the same loss and gradient as the plain injected layout."""

import pytest
import torch

from softprompt.core.data import Example, batches
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.model import SoftPromptModel
from softprompt.core.packed import supports_packing
from softprompt.core.prompt import Init, PromptConfig

TEXTS = ["hi", "a much longer input row of text", "mid size row", "x"]


def _examples(tokenizer, supervised: bool) -> list[Example]:
    out = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        labels = [IGNORE_INDEX] * (len(ids) - 1) + ids[-1:] if supervised else list(ids)
        out.append(Example(ids, labels))
    return out


def _loss_and_grad(model: SoftPromptModel, examples: list[Example], layout: str) -> tuple[float, int, torch.Tensor]:
    model.layout = layout
    prompt = model.require_prompt()
    prompt.embedding.grad = None
    total, count = 0.0, 0
    for batch in batches(examples, 3, model.base.tokenizer.pad_token_id, group_by_length=False):
        loss, n = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
        loss.backward()
        total, count = total + float(loss.detach()), count + n
    assert prompt.embedding.grad is not None
    return total, count, prompt.embedding.grad.clone()


@pytest.mark.parametrize("layout", ["shared", "packed"])
@pytest.mark.parametrize("supervised", [False, True])
def test_fast_layouts_equal_plain_layout(tiny, supervised, layout):
    """Shared prompt keys/values, and rows packed into one sequence: same loss, count and gradient."""
    if layout == "packed" and not supports_packing(tiny):
        pytest.skip(f"{tiny.model.config.model_type} attends outside the attention interface (ALiBi)")
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    examples = _examples(tiny.tokenizer, supervised)
    plain = _loss_and_grad(model, examples, layout="plain")
    fast = _loss_and_grad(model, examples, layout=layout)
    assert fast[1] == plain[1]
    assert fast[0] == pytest.approx(plain[0], rel=1e-5)
    torch.testing.assert_close(fast[2], plain[2], atol=1e-5, rtol=1e-4)


def test_packing_is_the_default_where_supported(tiny):
    """Every family but ALiBi ones (bloom) trains padding-free; bloom keeps the shared prefix."""
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM))
    expected = "shared" if tiny.model.config.model_type == "bloom" else "packed"
    assert model.layout == expected


def test_first_token_is_scored_from_the_last_virtual_token(llama):
    """A row with no padding still has its first token predicted (by the prompt's last state)."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM))
    ids = torch.tensor([[5, 6, 7]])
    _, count = model.loss(ids, torch.ones_like(ids), ids.clone())
    assert count == 3


def test_fused_head_cross_entropy_equals_plain(llama):
    """LinearCrossEntropy: same summed loss and d loss / d hidden as logits + F.cross_entropy."""
    from softprompt.core.model import FUSED_CHUNK, LinearCrossEntropy

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


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("max_tokens", [1, 12, 10_000])
def test_sliced_backward_equals_one_pass(llama, max_tokens, layout):
    """Row slices under a token budget, each trimmed to its longest row: same mean loss and gradient."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    model.layout = layout
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
    if layout == "packed":  # no padding is computed at all
        assert slots == int(batch.attention_mask.sum())
    assert mean == pytest.approx(float(loss) / count, rel=1e-5)
    torch.testing.assert_close(prompt.embedding.grad, expected, atol=1e-6, rtol=1e-4)


def test_row_slices_count_padding_only_when_padded():
    """Padded slices cost rows x longest row; packed slices the sum of their rows."""
    from softprompt.core.model import _row_slices

    lengths = [10, 2, 9, 3]
    assert _row_slices(lengths, 24) == [[0, 2], [3, 1]]  # 2 x 10, then 2 x 3
    assert _row_slices(lengths, 24, packed=True) == [[0, 2, 3, 1]]  # 10 + 9 + 3 + 2
