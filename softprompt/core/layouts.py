"""How a training or scoring pass lays out one soft prompt and a batch of rows. Same loss, any layout.

- ``plain``: the prompt injected into every left-padded row (:func:`softprompt.core.inject.inject`);
  the reference the others are tested against, and exact for every family.
- ``shared``: the prompt's keys/values computed once and attended to by every row.
- ``packed``: the prompt and the rows in one padding-free sequence (:mod:`softprompt.core.packed`).

Each returns hidden states and labels aligned for :func:`softprompt.core.loss.token_nll`.
"""

from __future__ import annotations

from typing import Literal

import torch

from softprompt.core.base import BaseModel
from softprompt.core.decoder import embed_tokens, prompt_cache, run_after_prefix, run_decoder
from softprompt.core.inject import IGNORE_INDEX, Injected, inject, inject_labels
from softprompt.core.packed import packed_hidden

Layout = Literal["packed", "shared", "plain"]
LAYOUTS: tuple[Layout, ...] = ("packed", "shared", "plain")


def choose_layout(base: BaseModel, n_prompt: int, width: int) -> Layout:
    """The fastest exact layout for a prompt of ``n_prompt`` tokens before rows up to ``width`` long.

    Under a sliding window, ``shared`` stays exact only while the prompt and the longest row fit
    in the window (a short row's queries would otherwise lose sight of the prompt across padding);
    ``plain`` keeps each row contiguous and is exact at any length.
    """
    family = base.family
    if family.packable:
        return "packed"
    span = family.max_span
    return "shared" if span is None or n_prompt + width <= span else "plain"


def layout_hidden(
    base: BaseModel,
    prompt: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    layout: Layout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [B', L, H] and labels [B', L] of left-padded rows after ``prompt`` [P, H]."""
    if layout == "packed":
        lengths = attention_mask.sum(dim=1).tolist()
        rows = [ids[ids.shape[0] - n :] for ids, n in zip(input_ids, lengths, strict=True)]
        targets = [row[row.shape[0] - n :] for row, n in zip(labels, lengths, strict=True)]
        return packed_hidden(base, prompt, rows, targets)
    if layout == "shared":
        hidden = shared_prefix_hidden(base, prompt, embed_tokens(base, input_ids), attention_mask)
        return hidden, shared_prefix_labels(labels)
    hidden, injected = injected_hidden(base, input_ids, attention_mask, [prompt] * input_ids.shape[0])
    return hidden, inject_labels(labels, injected)


def injected_hidden(
    base: BaseModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: list[torch.Tensor | None]
) -> tuple[torch.Tensor, Injected]:
    """The plain layout: each row's prompt (or none) injected after its padding; hidden [B, L, H] and the layout."""
    injected = inject(embed_tokens(base, input_ids), attention_mask, prompts)
    hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
    return hidden, injected


def shared_prefix_hidden(
    base: BaseModel, prompt: torch.Tensor, token_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden states [B, 1 + T, H] of left-padded tokens after one soft prompt [P, H] shared by every row.

    The prompt runs once (batch 1); its keys/values are expanded to the batch and gradients flow
    back through them into the prompt. Rows are laid out as ``[prompt][padding][tokens]``, which
    :func:`run_after_prefix` makes equivalent to ``[padding][prompt][tokens]``.

    Column 0, and the padding column just before a row's first token, hold the prompt's last
    state, which predicts that first token; so ``hidden[:, :-1]`` predicts ``tokens`` exactly as
    in the injected layout, given labels shifted right by one (see :func:`shared_prefix_labels`).
    """
    batch, seq, _ = token_embeds.shape
    prefix = prompt_cache(base, prompt)
    prefix.cache.batch_repeat_interleave(batch)  # [1, kv, P, d] -> [B, kv, P, d] per layer, differentiable
    prefix_mask = attention_mask.new_ones(batch, prefix.length)
    hidden, _ = run_after_prefix(base, prefix.cache, prefix_mask, token_embeds, attention_mask)
    last = prefix.hidden[-1:][None].expand(batch, 1, -1)  # [B, 1, H]
    hidden = torch.cat([last, hidden], dim=1)  # [B, 1 + T, H]
    first_predictor = (seq - attention_mask.sum(dim=1))[:, None]  # column before each row's first token
    at_predictor = torch.arange(seq + 1, device=hidden.device)[None, :] == first_predictor  # [B, 1 + T]
    return torch.where(at_predictor[..., None], last, hidden)


def shared_prefix_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, 1 + T], aligned with :func:`shared_prefix_hidden`."""
    return torch.cat([labels.new_full((labels.shape[0], 1), IGNORE_INDEX), labels], dim=1)
