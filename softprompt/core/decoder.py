"""The prompt core: the only way softprompt calls a frozen causal LM.

Training (every layout), held-out scoring, rank classification, generation, the engine and
export all go through these few functions, so a family's quirk is handled once:

- :func:`embed_tokens`: token ids -> what the model itself feeds its first layer. Some families'
  embedding modules do more than a table lookup (Gemma scales by sqrt(hidden)), so the module is
  called, never its weight indexed; soft prompts live in this same space.
- :func:`run_decoder`: the decoder stack on embeddings with explicit mask and positions.
- :func:`prompt_cache` and :func:`run_after_prefix`: a prefix's keys/values computed once and then
  attended to by any number of rows. Under causal attention the prefix never sees what follows it,
  so sharing its cache is exact (Li & Liang, 2021, make the same observation for prefix tuning).
- :func:`lm_logits`: the LM head plus whatever the family's causal-LM forward does after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from softprompt.core.base import BaseModel


def embed_tokens(base: BaseModel, ids: torch.Tensor) -> torch.Tensor:
    """[..., T] token ids -> [..., T, H] input embeddings, exactly as the model embeds them."""
    return base.model.get_input_embeddings()(ids)


def run_decoder(
    base: BaseModel,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any | None = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Run the decoder stack (no LM head) on embeddings [B, L, H]; returns hidden states and cache.

    With a cache, ``attention_mask`` covers the cached slots too and ``position_ids`` only the
    new ones, as transformers expects. ALiBi models take their positions from the mask.
    """
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
    if base.family.accepts_position_ids:
        kwargs["position_ids"] = position_ids
    out = base.model.base_model(**kwargs, cache=cache, use_cache=use_cache)
    return out.last_hidden_state, out.cache if use_cache else None


@dataclass
class PrefixState:
    """A prefix run once: its hidden states [P, H] (or [K, P, H] for K prefixes) and per-layer keys/values."""

    hidden: torch.Tensor
    cache: DynamicCache

    @property
    def length(self) -> int:
        return int(self.hidden.shape[-2])


def prompt_cache(base: BaseModel, prefix: torch.Tensor) -> PrefixState:
    """Run a prefix [P, H] (a soft prompt, a context's embeddings, or both) alone from position 0.

    A batch [K, P, H] runs K prefixes side by side (a sweep's candidates); shorter ones may be
    zero-padded on the right, since under causal attention no real slot sees the padding after it.
    Differentiable when ``prefix`` requires grad: training backpropagates through the shared
    keys/values into the prompt.
    """
    embeds = prefix.to(base.device, base.dtype)
    batched = embeds.ndim == 3
    embeds = embeds if batched else embeds[None]  # [K, P, H]
    count, length = embeds.shape[:2]
    ones = torch.ones(count, length, dtype=torch.long, device=base.device)
    positions = torch.arange(length, device=base.device)[None].expand(count, length)
    hidden, cache = run_decoder(base, embeds, ones, positions, DynamicCache(config=base.model.config), use_cache=True)
    return PrefixState(hidden if batched else hidden[0], cache)


def run_after_prefix(
    base: BaseModel,
    cache: DynamicCache,
    prefix_mask: torch.Tensor,
    token_embeds: torch.Tensor,
    token_mask: torch.Tensor,
) -> tuple[torch.Tensor, DynamicCache]:
    """Hidden states [B, T, H] of left-padded rows after per-row prefixes already in ``cache``.

    Row b attends to ``[prefix slots where prefix_mask[b] is 1][its tokens]``: the masked slots
    (a shorter prefix's zero padding, the row's left padding) are never attended, and positions
    go on from the row's own prefix length, so every row sees exactly what it would see alone.
    prefix_mask: [B, S] over the cache's slots; token_mask: [B, T]. ``cache`` grows by T slots.
    """
    mask = torch.cat([prefix_mask, token_mask], dim=1)  # [B, S + T]
    positions = prefix_mask.sum(dim=1, keepdim=True) + (token_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, T]
    hidden, cache = run_decoder(base, token_embeds, mask, positions, cache, use_cache=True)
    return hidden, cache


def lm_logits(base: BaseModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] as the family's causal-LM forward computes them from hidden states [..., H]."""
    family = base.family
    logits = base.model.get_output_embeddings()(hidden)
    if family.logit_scale != 1.0:
        logits = logits * family.logit_scale
    if family.softcap:
        logits = torch.tanh(logits / family.softcap) * family.softcap
    return logits
