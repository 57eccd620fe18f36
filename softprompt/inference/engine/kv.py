"""KV bookkeeping: prompt KV per adapter and the layout of a running batch's cache.

Under causal attention a soft prompt's keys and values never see the tokens after it, so they
are computed once per adapter (running its virtual tokens alone from position 0) and copied
into every batch that uses it. A batch cache row is laid out as::

    [prompt KV of the row | zeros up to the batch's longest prompt][left padding][real tokens]

with the attention mask 1 only on the row's prompt slots and real tokens. Real tokens take
position ids from the row's prompt length on, so every row sees exactly what it would see alone:
rotary and learned position embeddings are already baked into the cached keys, and ALiBi (bloom)
counts positions from the mask, where masked slots do not count. Merging two batches left-pads
the shorter one with more masked slots, which changes nothing for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PretrainedConfig

from softprompt.core.decoder import cache_of, layers_of

# Per layer: (keys, values), each [B, kv_heads, S, head_dim].
Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PromptKV:
    """One adapter's cached keys/values: per layer (keys, values), each [kv_heads, P, head_dim]."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[1]) if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class BatchKV:
    """The running batch's device state; row i belongs to ``seq_ids[i]``."""

    seq_ids: list[int]
    cache: DynamicCache  # per layer keys/values [B, kv_heads, S, head_dim], grown in place by decode steps
    mask: torch.Tensor  # [B, S] long: 1 on prompt slots and real tokens
    next_position: torch.Tensor  # [B] position id of the token fed next
    last_token: torch.Tensor  # [B] sampled, not yet fed

    def __len__(self) -> int:
        return len(self.seq_ids)


def prompt_prefix(prompts: list[PromptKV | None], device: torch.device) -> tuple[Layers, torch.Tensor]:
    """Stack rows' prompt KV, zero-padded on the right to the longest: per layer [B, h, Pmax, d], mask [B, Pmax]."""
    known = [p for p in prompts if p is not None and p.length]
    p_max = max((p.length for p in known), default=0)
    if not known:
        return [], torch.zeros(len(prompts), 0, dtype=torch.long, device=device)
    first = known[0].layers
    layers: Layers = []
    for index, (k0, v0) in enumerate(first):
        keys = k0.new_zeros(len(prompts), k0.shape[0], p_max, k0.shape[2])
        values = v0.new_zeros(len(prompts), v0.shape[0], p_max, v0.shape[2])
        for row, prompt in enumerate(prompts):
            if prompt is not None and prompt.length:
                k, v = prompt.layers[index]
                keys[row, :, : k.shape[1]] = k
                values[row, :, : v.shape[1]] = v
        layers.append((keys, values))
    mask = torch.zeros(len(prompts), p_max, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        if prompt is not None:
            mask[row, : prompt.length] = 1
    return layers, mask


def _left_pad(layers: Layers, mask: torch.Tensor, extra: int) -> tuple[Layers, torch.Tensor]:
    if extra == 0:
        return layers, mask
    padded = [(_pad_seq(k, extra), _pad_seq(v, extra)) for k, v in layers]
    return padded, torch.cat([mask.new_zeros(mask.shape[0], extra), mask], dim=1)


def _pad_seq(tensor: torch.Tensor, extra: int) -> torch.Tensor:
    zeros = tensor.new_zeros(*tensor.shape[:2], extra, tensor.shape[3])
    return torch.cat([zeros, tensor], dim=2)


def merge(a: BatchKV | None, b: BatchKV, config: PretrainedConfig) -> BatchKV:
    """Append batch ``b``'s rows to ``a``, left-padding the shorter cache with masked slots."""
    if a is None or len(a) == 0:
        return b
    length = max(a.mask.shape[1], b.mask.shape[1])
    a_layers, a_mask = _left_pad(layers_of(a.cache), a.mask, length - a.mask.shape[1])
    b_layers, b_mask = _left_pad(layers_of(b.cache), b.mask, length - b.mask.shape[1])
    layers = [(torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(a_layers, b_layers)]
    return BatchKV(
        seq_ids=a.seq_ids + b.seq_ids,
        cache=cache_of(layers, config),
        mask=torch.cat([a_mask, b_mask]),
        next_position=torch.cat([a.next_position, b.next_position]),
        last_token=torch.cat([a.last_token, b.last_token]),
    )


def select(batch: BatchKV, keep: list[int], config: PretrainedConfig) -> BatchKV:
    """Keep only rows ``keep`` (in that order), then drop leading slots no remaining row attends to."""
    index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
    layers = layers_of(batch.cache)
    mask = batch.mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    return BatchKV(
        seq_ids=[batch.seq_ids[i] for i in keep],
        cache=cache_of(
            [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in layers],
            config,
        ),
        mask=mask[:, start:],
        next_position=batch.next_position.index_select(0, index),
        last_token=batch.last_token.index_select(0, index),
    )
