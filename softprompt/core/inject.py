"""Prompt injection: the one place where virtual tokens enter a batch.

Every row of a left-padded batch becomes ``[padding][virtual tokens][real tokens]``: the virtual
tokens come first in what the row attends to, after that row's own padding, and position ids
count from the first virtual token. Rows may carry different prompts (or none) of different
lengths, which is what mixed-task batches need. The same rule holds for every architecture;
models whose positions come from the attention mask (ALiBi, e.g. bloom) get the same layout and
simply ignore ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from softprompt.core.errors import RequestError

IGNORE_INDEX = -100


@dataclass
class Injected:
    embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L] long, 0 on padding
    position_ids: torch.Tensor  # [B, L], 0 on padding
    source: torch.Tensor  # [B, L] index into cat(tokens [T], prompt slots [Pmax]) per row
    num_tokens: int  # T, to tell token slots (< T) from prompt slots (>= T)


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] of left-padded rows: each row's first real token is 0 (padding gets 0 too)."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Padding must be on the left so a row's last token is its newest one."""
    if attention_mask.ndim != 2:
        raise RequestError(f"attention_mask must be [batch, seq], got shape {tuple(attention_mask.shape)}")
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise RequestError("attention_mask must be left-padded (zeros before ones in every row)")


def inject(
    token_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    prompts: Sequence[torch.Tensor | None],
) -> Injected:
    """Place each row's prompt after its left padding and before its tokens.

    token_embeds: [B, T, H]; attention_mask: [B, T] left-padded; prompts: B tensors [P_b, H] or None.
    Returns a batch of length L = max_b(P_b + n_b), itself left-padded.
    """
    check_left_padded(attention_mask)
    batch, seq, hidden = token_embeds.shape
    if len(prompts) != batch:
        raise RequestError(f"got {len(prompts)} prompts for a batch of {batch} rows")
    for row, prompt in enumerate(prompts):
        if prompt is not None and (prompt.ndim != 2 or prompt.shape[1] != hidden):
            raise RequestError(
                f"soft prompt for row {row + 1} has shape {tuple(prompt.shape)}, expected [virtual tokens, {hidden}]"
            )
    lengths = attention_mask.sum(dim=1)  # n_b
    p_lens = torch.tensor([0 if p is None else p.shape[0] for p in prompts], device=lengths.device)
    p_max = int(p_lens.max()) if batch else 0
    total = int((lengths + p_lens).max()) if batch else 0

    slots = token_embeds.new_zeros(batch, p_max, hidden)  # [B, Pmax, H]
    for row, prompt in enumerate(prompts):
        if prompt is not None:
            slots[row, : prompt.shape[0]] = prompt.to(token_embeds.dtype)
    source_embeds = torch.cat([token_embeds, slots], dim=1)  # [B, T + Pmax, H]

    j = torch.arange(total, device=lengths.device)[None, :]  # [1, L]
    pad = (total - lengths - p_lens)[:, None]  # [B, 1] padding before this row's prompt
    in_prompt = (j >= pad) & (j < pad + p_lens[:, None])
    in_tokens = j >= pad + p_lens[:, None]
    # Tokens keep their order: the k-th real token of a row sits at index T - n_b + k of token_embeds.
    token_index = (seq - lengths[:, None]) + (j - pad - p_lens[:, None])
    source = torch.where(in_prompt, seq + (j - pad), torch.where(in_tokens, token_index, 0))
    embeds = torch.gather(source_embeds, 1, source[..., None].expand(-1, -1, hidden))
    mask = (in_prompt | in_tokens).long()
    position_ids = mask_positions(mask) * mask
    return Injected(embeds, mask, position_ids, source, seq)


def inject_labels(labels: torch.Tensor, injected: Injected) -> torch.Tensor:
    """Carry [B, T] labels to the injected layout; prompt and padding slots are ignored."""
    from_tokens = (injected.source < injected.num_tokens) & injected.attention_mask.bool()
    moved = torch.gather(labels, 1, injected.source.clamp(max=injected.num_tokens - 1))
    return torch.where(from_tokens, moved, IGNORE_INDEX)
