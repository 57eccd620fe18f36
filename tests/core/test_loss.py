"""The fused LM head + cross-entropy equals logits + F.cross_entropy."""

import torch

from softprompt.core.loss import FUSED_CHUNK, LinearCrossEntropy


def test_fused_head_cross_entropy_equals_plain(llama):
    """LinearCrossEntropy: same summed loss and d loss / d hidden as logits + F.cross_entropy."""
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
