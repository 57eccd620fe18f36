"""Every layout (packed rows, shared prompt keys/values) computes the plain injected layout's loss and gradient.

tests/conformance runs the same check on every supported family; these cover the details.
"""

import pytest
import torch

from softprompt.core.data import Example, batches
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from tests.conftest import row_examples


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
    if layout == "packed" and not tiny.family.packable:
        pytest.skip(f"{tiny.model.config.model_type} attends outside the attention interface (ALiBi)")
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    examples = row_examples(tiny.tokenizer, supervised)
    plain = _loss_and_grad(model, examples, layout="plain")
    fast = _loss_and_grad(model, examples, layout=layout)
    assert fast[1] == plain[1]
    assert fast[0] == pytest.approx(plain[0], rel=1e-5)
    torch.testing.assert_close(fast[2], plain[2], atol=1e-5, rtol=1e-4)


def test_packing_is_the_default_where_supported(tiny):
    """Every family but ALiBi ones (bloom) trains padding-free; bloom keeps the shared prefix."""
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM))
    expected = "shared" if tiny.model.config.model_type == "bloom" else "packed"
    assert model.layout is None and model.layout_for(8) == expected


def test_first_token_is_scored_from_the_last_virtual_token(llama):
    """A row with no padding still has its first token predicted (by the prompt's last state)."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init=Init.RANDOM))
    ids = torch.tensor([[5, 6, 7]])
    _, count = model.loss(ids, torch.ones_like(ids), ids.clone())
    assert count == 3


@pytest.mark.parametrize("layout", ["plain", "shared", "packed"])
def test_rows_with_different_prompts_see_only_their_own(tiny, layout):
    """Several prompts of different lengths in one pass (a sweep): each prompt's loss and gradient are
    those of its rows run alone, whatever the row order."""
    if layout == "packed" and not tiny.family.packable:
        pytest.skip("ALiBi families do not pack")
    models = [
        SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=n, init=Init.RANDOM), seed=n)
        for n in (2, 4, 3)
    ]
    for model in models:
        model.layout = layout
    examples = row_examples(tiny.tokenizer, supervised=False) * 2
    owners = [2, 0, 1, 0, 2, 1, 2, 0]
    batch = next(batches(examples, len(examples), tiny.tokenizer.pad_token_id, group_by_length=False))
    together = SoftPromptModel.joint_loss(models, owners, batch.input_ids, batch.attention_mask, batch.labels)
    sum(loss for loss, _ in together).backward()
    for k, model in enumerate(models):
        grad = model.prompt.embedding.grad.clone()
        model.prompt.embedding.grad = None
        rows = torch.tensor([r for r, o in enumerate(owners) if o == k])
        loss, count = model.loss(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
        loss.backward()
        assert together[k][1] == count
        assert float(together[k][0]) == pytest.approx(float(loss), rel=1e-5)
        torch.testing.assert_close(grad, model.prompt.embedding.grad, atol=1e-5, rtol=1e-4)
