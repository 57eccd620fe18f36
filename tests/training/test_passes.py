"""Row slices under a token budget give the one-pass loss and gradient."""

import pytest
import torch

from softprompt.core.data import batches
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.passes import backward_loss, row_slices
from tests.conftest import row_examples


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("max_tokens", [1, 12, 10_000])
def test_sliced_backward_equals_one_pass(llama, max_tokens, layout):
    """Row slices under a token budget, each trimmed to its longest row: same mean loss and gradient."""
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    model.layout = layout
    batch = next(batches(row_examples(llama.tokenizer, False), 4, llama.tokenizer.pad_token_id))
    prompt = model.require_prompt()
    loss, count = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    (loss / count / 2).backward()
    assert prompt.embedding.grad is not None
    expected = prompt.embedding.grad.clone()
    prompt.embedding.grad = None
    owners = [0] * batch.input_ids.shape[0]
    (mean,), (slots,) = backward_loss(
        [model], owners, batch.input_ids, batch.attention_mask, batch.labels, [0.5], [count], max_tokens=max_tokens
    )
    assert slots <= batch.input_ids.numel()
    if layout == "packed":  # no padding is computed at all
        assert slots == int(batch.attention_mask.sum())
    assert mean == pytest.approx(float(loss) / count, rel=1e-5)
    torch.testing.assert_close(prompt.embedding.grad, expected, atol=1e-6, rtol=1e-4)


def test_row_slices_count_padding_only_when_padded():
    """Padded slices cost rows x longest row; packed slices the sum of their rows."""
    lengths = [10, 2, 9, 3]
    padded, packed = (lambda rows: len(rows) * max(rows)), sum
    assert row_slices(lengths, 24, padded) == [[0, 2], [3, 1]]  # 2 x 10, then 2 x 3
    assert row_slices(lengths, 24, packed) == [[0, 2, 3, 1]]  # 10 + 9 + 3 + 2
