"""The training and scoring loss: cross-entropy of labelled next tokens, from hidden states.

The LM head runs only on positions that predict a label, so the [B, L, vocab] logits tensor is
never built; where the head is a frozen bias-free linear layer (most families) the head and the
cross-entropy are fused so that no [N, vocab] buffer outlives one chunk.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.core.decoder import lm_logits
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX

# Rows of the LM head computed at once on the unfused path; bounds the [rows, vocab] logits buffer.
LOSS_CHUNK = 2048
# Rows per chunk of the fused head + cross-entropy: a [512, vocab] fp32 buffer is 100 MB for a
# 49k vocabulary, and 512 rows keep the matmul efficient.
FUSED_CHUNK = 512


def token_nll(base: FrozenModel, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the labelled next tokens, and how many there were.

    hidden [B, L, H] and labels [B, L]: position i predicts label i + 1.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]  # [N, H]
    wanted = targets[keep]  # [N]
    if not wanted.numel():  # nothing to predict here (a kv prompt's one-token rows): zero, still in the graph
        return hidden.sum().float() * 0.0, 0
    head = base.model.get_output_embeddings()
    if _fusable(base, head):
        scale = base.family.logit_scale
        scaled = selected * scale if scale != 1.0 else selected  # scale * (h @ W.T) == (scale * h) @ W.T
        return LinearCrossEntropy.apply(scaled, head.weight, wanted), int(wanted.numel())
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, selected.shape[0], LOSS_CHUNK):
        logits = lm_logits(base, selected[start : start + LOSS_CHUNK]).float()
        total = total + F.cross_entropy(logits, wanted[start : start + LOSS_CHUNK], reduction="sum")
    return total, int(wanted.numel())


def _fusable(base: FrozenModel, head: Any) -> bool:
    """A frozen bias-free linear head with no soft-capping: what LinearCrossEntropy computes."""
    return (
        isinstance(head, nn.Linear) and head.bias is None and not head.weight.requires_grad and not base.family.softcap
    )


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` with the gradient taken during the forward pass.

    hidden [N, H], frozen weight [V, H], targets [N]. Chunk by chunk, the logits become softmax
    minus one-hot in place and are multiplied back into d loss / d hidden [N, H], so no [N, V]
    buffer outlives its chunk and autograd stores only [N, H] (the idea of Liger's fused linear
    cross-entropy). The weight is frozen, so it gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if want_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], FUSED_CHUNK):
            rows = slice(start, start + FUSED_CHUNK)
            logits = (hidden[rows] @ weight.T).float()  # [n, V]
            target = targets[rows]
            picked = logits.gather(1, target[:, None])
            peak = logits.amax(dim=1, keepdim=True)
            # exp in place: the [n, V] buffer is read four times (max, sub, exp, sum), never copied
            norm = logits.sub_(peak).exp_().sum(dim=1, keepdim=True)  # [n, 1]
            total += (peak + norm.log() - picked).sum()
            if grad is not None:  # d/dh = softmax @ W - W[target]: the division folds into [n, H]
                grad[rows] = (logits.to(weight.dtype) @ weight).div_(norm.to(weight.dtype)) - weight[target]
        ctx.save_for_backward(grad)
        return total  # fp32 whatever the model dtype, like the plain path

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else (grad * grad_total).to(grad.dtype)), None, None
