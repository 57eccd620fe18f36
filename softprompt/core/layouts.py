"""How a training or scoring pass lays out soft prompts and a batch of rows. Same loss, any layout.

- ``plain``: the prompt injected into every left-padded row (:func:`softprompt.core.inject.inject`);
  the reference the others are tested against, and exact for every family.
- ``shared``: the prompt's keys/values computed once and attended to by every row.
- ``packed``: the prompt and the rows in one padding-free sequence (:mod:`softprompt.core.packed`).

A pass may carry several prompts, each row attending to its own (``owners``): that is how a
sweep's candidates train in the same passes over the frozen model (:mod:`softprompt.training.sweep`).
Every layout gives each row exactly what it sees in a pass of its prompt alone, and returns, per
prompt, hidden states and labels aligned for :func:`softprompt.core.loss.token_nll`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from softprompt.core.base import BaseModel
from softprompt.core.decoder import embed_tokens, prompt_cache, run_after_prefix, run_decoder
from softprompt.core.inject import IGNORE_INDEX, Injected, inject, inject_labels
from softprompt.core.packed import packed_hidden

Layout = Literal["packed", "shared", "plain"]
LAYOUTS: tuple[Layout, ...] = ("packed", "shared", "plain")
Piece = tuple[torch.Tensor, torch.Tensor]  # hidden [B', L, H] and labels [B', L], as token_nll takes them


def choose_layout(base: BaseModel, n_prompt: int, width: int) -> Layout:
    """The fastest exact layout for a prompt of ``n_prompt`` tokens before rows up to ``width`` long.

    Under a sliding window, ``shared`` stays exact only while the prompt and the longest row fit
    in the window (a short row's queries would otherwise lose sight of the prompt across padding);
    ``plain`` keeps each row contiguous and is exact at any length. With several prompts,
    ``n_prompt`` is the longest.
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
) -> Piece:
    """Hidden states [B', L, H] and labels [B', L] of left-padded rows after ``prompt`` [P, H]."""
    owners = [0] * input_ids.shape[0]
    piece = layout_pieces(base, [prompt], owners, input_ids, attention_mask, labels, layout)[0]
    assert piece is not None  # every row belongs to the one prompt
    return piece


def layout_pieces(
    base: BaseModel,
    prompts: Sequence[torch.Tensor],
    owners: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    layout: Layout,
) -> list[Piece | None]:
    """Per prompt k [P_k, H]: hidden states and labels of the rows with ``owners[row] == k`` (None if none).

    Rows are grouped by owner first (a stable sort), so each prompt's rows form one contiguous
    piece of the pass; every row attends to its own prompt only.
    """
    order = sorted(range(len(owners)), key=lambda row: owners[row])
    if order != list(range(len(owners))):
        index = torch.tensor(order, device=input_ids.device)
        input_ids, attention_mask, labels = (t.index_select(0, index) for t in (input_ids, attention_mask, labels))
        owners = [owners[row] for row in order]
    counts = [owners.count(k) for k in range(len(prompts))]
    if layout == "packed":
        lengths = attention_mask.sum(dim=1).tolist()
        rows = [ids[ids.shape[0] - n :] for ids, n in zip(input_ids, lengths, strict=True)]
        targets = [row[row.shape[0] - n :] for row, n in zip(labels, lengths, strict=True)]
        hidden, flat = packed_hidden(base, prompts, owners, rows, targets)
        spans, start = [], 0
        for count in counts:  # row r takes 1 + its length positions (see packed_hidden)
            spans.append(sum(1 + n for n in lengths[start : start + count]))
            start += count
        return _split(hidden, flat, spans, dim=1)
    if layout == "shared":
        hidden = shared_prefix_hidden(base, prompts, owners, embed_tokens(base, input_ids), attention_mask)
        return _split(hidden, shared_prefix_labels(labels), counts, dim=0)
    hidden, injected = injected_hidden(base, input_ids, attention_mask, [prompts[owner] for owner in owners])
    return _split(hidden, inject_labels(labels, injected), counts, dim=0)


def _split(hidden: torch.Tensor, labels: torch.Tensor, sizes: list[int], dim: int) -> list[Piece | None]:
    if len(sizes) == 1:
        return [(hidden, labels)]
    pieces = zip(hidden.split(sizes, dim=dim), labels.split(sizes, dim=dim), strict=True)
    return [piece if size else None for piece, size in zip(pieces, sizes, strict=True)]


def injected_hidden(
    base: BaseModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: list[torch.Tensor | None]
) -> tuple[torch.Tensor, Injected]:
    """The plain layout: each row's prompt (or none) injected after its padding; hidden [B, L, H] and the layout."""
    injected = inject(embed_tokens(base, input_ids), attention_mask, prompts)
    hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
    return hidden, injected


def shared_prefix_hidden(
    base: BaseModel,
    prompts: Sequence[torch.Tensor],
    owners: list[int],
    token_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Hidden states [B, 1 + T, H] of left-padded tokens, row b after soft prompt ``owners[b]`` [P_o, H].

    The prompts run once, side by side (a batch of K, zero-padded on the right to the longest);
    each row takes its owner's keys/values and gradients flow back through them into that
    prompt. Rows are laid out as ``[prompt][padding][tokens]`` (a shorter prompt's padding slots
    masked), which :func:`run_after_prefix` makes equivalent to ``[padding][prompt][tokens]``.

    Column 0, and the padding column just before a row's first token, hold the prompt's last
    state, which predicts that first token; so ``hidden[:, :-1]`` predicts ``tokens`` exactly as
    in the injected layout, given labels shifted right by one (see :func:`shared_prefix_labels`).
    """
    batch, seq, _ = token_embeds.shape
    device = token_embeds.device
    sizes = torch.tensor([prompt.shape[0] for prompt in prompts], device=device)
    longest = int(sizes.max())
    stacked = torch.stack([torch.nn.functional.pad(prompt, (0, 0, 0, longest - prompt.shape[0])) for prompt in prompts])
    prefix = prompt_cache(base, stacked)  # hidden [K, Pmax, H]
    owner = torch.tensor(owners, device=device)
    prefix.cache.batch_select_indices(owner)  # [K, kv, P, d] -> [B, kv, P, d] per layer, differentiable
    prefix_mask = (torch.arange(longest, device=device)[None, :] < sizes[owner][:, None]).long()  # [B, Pmax]
    hidden, _ = run_after_prefix(base, prefix.cache, prefix_mask, token_embeds, attention_mask)
    last = prefix.hidden[owner, sizes[owner] - 1][:, None]  # [B, 1, H]: each row's prompt's last state
    hidden = torch.cat([last, hidden], dim=1)  # [B, 1 + T, H]
    first_predictor = (seq - attention_mask.sum(dim=1))[:, None]  # column before each row's first token
    at_predictor = torch.arange(seq + 1, device=hidden.device)[None, :] == first_predictor  # [B, 1 + T]
    return torch.where(at_predictor[..., None], last, hidden)


def shared_prefix_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, 1 + T], aligned with :func:`shared_prefix_hidden`."""
    return torch.cat([labels.new_full((labels.shape[0], 1), IGNORE_INDEX), labels], dim=1)
