"""The prompt core: the only way softprompt calls a frozen causal LM.

Training (every layout), held-out scoring, rank classification, generation, the engine and
export all go through these few functions, so a family's quirk is handled once:

- :func:`embed_tokens`: token ids -> what the model itself feeds its first layer. Some families'
  embedding modules do more than a table lookup (Gemma scales by sqrt(hidden)), so the module is
  called, never its weight indexed; soft prompts live in this same space.
- :func:`run_decoder`: the decoder stack on embeddings with explicit mask and positions.
- :func:`prompt_cache` and :func:`run_after_prefix`: a prompt's keys/values in every layer, computed
  once and then attended to by any number of rows. Under causal attention the prefix never sees
  what follows it, so sharing its cache is exact (Li & Liang, 2021, make the same observation for
  prefix tuning). Every form of prompt (:mod:`softprompt.core.forms`) is such a cache.
- :func:`layer_span`: a pass over some of the decoder's layers, entering with given states: the
  frozen layers below a late prompt run once per row, the layers above at every step.
- :func:`lm_logits`: the LM head plus whatever the family's causal-LM forward does after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import mask_positions


def embed_tokens(base: FrozenModel, ids: torch.Tensor) -> torch.Tensor:
    """[..., T] token ids -> [..., T, H] input embeddings, exactly as the model embeds them."""
    return base.model.get_input_embeddings()(ids)


Edit = tuple[int, Callable[[torch.Tensor], torch.Tensor]]  # (layer, states entering it -> what enters instead)


def run_decoder(
    base: FrozenModel,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any | None = None,
    use_cache: bool = False,
    *,
    start: int = 0,
    stop: int | None = None,
    edit: Edit | None = None,
) -> tuple[torch.Tensor, Any]:
    """Run decoder layers ``start`` .. ``stop`` - 1 on ``embeds`` [B, L, H], the states entering layer ``start``.

    ``start`` 0: ``embeds`` are input embeddings, the whole decoder runs and the result is its
    last hidden state (after the final norm). ``stop``: the states entering that layer are returned
    instead (before any norm), and the layers from it on never run. ``edit``: the states entering
    one layer are replaced by ``fn(states)``, which is how a late prompt's vectors take the place of
    its frozen slots. With a cache, ``attention_mask`` covers the cached slots too and
    ``position_ids`` only the new ones, as transformers expects. ALiBi models take their positions
    from the mask.
    """
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
    if base.family.accepts_position_ids:
        kwargs["position_ids"] = position_ids
    stop = base.num_layers if stop is None else stop
    if (start, stop, edit) == (0, base.num_layers, None):
        out = base.model.base_model(**kwargs, cache=cache, use_cache=use_cache)
        return out.last_hidden_state, out.cache if use_cache else None
    with layer_span(base, start, stop, embeds if start else None, edit) as captured:
        out = base.model.base_model(**kwargs, cache=cache, use_cache=use_cache)
    hidden = out.last_hidden_state if stop == base.num_layers else captured[0]
    return hidden, out.cache if use_cache else None


@contextmanager
def layer_span(
    base: FrozenModel, start: int, stop: int, entering: torch.Tensor | None = None, edit: Edit | None = None
) -> Iterator[list[torch.Tensor]]:
    """For one forward pass, the decoder runs layers ``start`` .. ``stop`` - 1 only.

    The model computes masks and positions for the whole sequence as usual; its layer list (and
    ``config.layer_types``, which some families index by loop position) is cut to the span, so
    layers outside it cost nothing. ``entering`` replaces the states the model would feed layer
    ``start`` (its own embedding work is discarded); ``edit`` rewrites the states entering one
    layer of the span. Yields a list that receives the states leaving layer ``stop`` - 1 when the
    span ends early. Each layer keeps its own ``layer_idx``, so a cache still fills the right layers.
    Not thread-safe: softprompt calls a model from one thread.
    """
    layers = base.layers
    if not 0 <= start < stop <= len(layers):
        raise ConfigError(f"layer span {start}..{stop} is outside the model's {len(layers)} layers")
    parent, attribute = base.layers_owner
    config = base.model.config
    layer_types = getattr(config, "layer_types", None)
    captured: list[torch.Tensor] = []
    hooks = []
    entry_fn = edit[1] if edit is not None and edit[0] == start else None
    if entering is not None or entry_fn is not None:
        hooks.append(layers[start].register_forward_pre_hook(_replace(entering, entry_fn), with_kwargs=True))
    if edit is not None and edit[0] != start:
        if not start < edit[0] < stop:
            raise ConfigError(f"cannot edit the states entering layer {edit[0]} in a pass over {start}..{stop}")
        hooks.append(layers[edit[0]].register_forward_pre_hook(_replace(None, edit[1]), with_kwargs=True))
    if stop < len(layers):
        hooks.append(layers[stop - 1].register_forward_hook(lambda _m, _a, out: captured.append(_first(out))))
    setattr(parent, attribute, nn.ModuleList(list(layers)[start:stop]))
    if layer_types is not None:
        config.layer_types = list(layer_types)[start:stop]
    try:
        yield captured
    finally:
        setattr(parent, attribute, layers)
        if layer_types is not None:
            config.layer_types = layer_types
        for hook in hooks:
            hook.remove()


def _first(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states: some families' layers return a tuple (bloom, falcon)."""
    return output[0] if isinstance(output, tuple) else output


def _replace(
    entering: torch.Tensor | None, fn: Callable[[torch.Tensor], torch.Tensor] | None
) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def hook(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        states = args[0] if args else kwargs["hidden_states"]
        if entering is not None:
            states = entering.to(states.dtype)
        if fn is not None:
            states = fn(states)
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    return hook


@dataclass
class PrefixState:
    """Prefixes run once: per-layer keys/values [K, kv, P, d] in a cache, and the states that predict what follows.

    ``last`` [K, H]: each prefix's final hidden state at its last slot, which predicts the first
    token after it; zeros for a ``kv`` prompt, which has no states of its own (that token is not
    predicted, as in PEFT's prefix tuning: ``predicts_first`` says which).
    """

    last: torch.Tensor
    cache: DynamicCache
    lengths: list[int]
    predicts_first: list[bool]

    @property
    def length(self) -> int:
        return max(self.lengths)


def prompt_cache(base: FrozenModel, prompts: Sequence[Prompt]) -> PrefixState:
    """Every layer's keys/values of K prompts side by side, zero-padded on the right to the longest.

    A prompt's slots take positions 0 .. P-1 (see :mod:`softprompt.core.forms`). Vectors entering
    at the same layer run together, as one batch; under causal attention no real slot sees the
    padding after it. Differentiable in the prompts' weights: training backpropagates through the
    shared keys/values into them. The frozen layers below a late prompt are computed without a graph.
    """
    values = list(prompts)
    longest = max(p.num_virtual_tokens for p in values)
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in values]  # per prompt, per layer [kv, P, d]
    last = torch.zeros(len(values), base.hidden_size, dtype=base.dtype, device=base.device)
    for group in _groups(values):
        members = [values[i] for i in group]
        if members[0].entry:
            with torch.no_grad():
                below = run_slots(base, [p.below for p in members], 0, members[0].entry)[1]
        else:
            below = [[] for _ in group]
        if members[0].form is Form.VECTORS:
            hidden, above = run_slots(base, [p.weights for p in members], members[0].entry, base.num_layers)
            for j, i in enumerate(group):
                last[i] = hidden[j, values[i].num_virtual_tokens - 1]
        else:
            above = [[(w[0].to(base.dtype), w[1].to(base.dtype)) for w in p.weights.to(base.device)] for p in members]
        for j, i in enumerate(group):
            layers[i] = below[j] + above[j]
    stacked = []
    for index in range(base.num_layers):
        keys = torch.stack([_pad_slots(layers[i][index][0], longest) for i in range(len(values))])
        vals = torch.stack([_pad_slots(layers[i][index][1], longest) for i in range(len(values))])
        stacked.append((keys, vals))
    lengths = [p.num_virtual_tokens for p in values]
    return PrefixState(last, cache_of(stacked, base.model.config), lengths, [p.form is Form.VECTORS for p in values])


def _groups(values: list[Prompt]) -> list[list[int]]:
    """Indices of prompts of the same form and entry layer, which are computed in one pass."""
    groups: dict[tuple[Form, int], list[int]] = {}
    for i, prompt in enumerate(values):
        groups.setdefault((prompt.form, prompt.entry), []).append(i)
    return list(groups.values())


def run_slots(
    base: FrozenModel, slots: Sequence[torch.Tensor | None], start: int, stop: int
) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Run K sets of slot states [P_k, H] alone from position 0 through layers start .. stop - 1.

    Returns the states after them [K, Pmax, H] and, per set, layers start .. stop - 1's keys and
    values [kv, P_k, d].
    """
    lengths = [int(s.shape[0]) for s in slots if s is not None]
    longest = max(lengths)
    embeds = torch.stack([_pad_slots(s.to(base.device, base.dtype), longest) for s in slots if s is not None])
    count = embeds.shape[0]
    ones = torch.ones(count, longest, dtype=torch.long, device=base.device)
    positions = torch.arange(longest, device=base.device)[None].expand(count, longest)
    cache = DynamicCache(config=base.model.config)
    hidden, cache = run_decoder(base, embeds, ones, positions, cache, use_cache=True, start=start, stop=stop)
    per_layer = layers_of(cache)[start:stop]
    kv = [[(k[j, :, :n], v[j, :, :n]) for k, v in per_layer] for j, n in enumerate(lengths)]
    return hidden, kv


def _pad_slots(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the slot dimension (second to last) on the right to ``length``."""
    extra = length - tensor.shape[-2]
    return tensor if extra == 0 else torch.nn.functional.pad(tensor, (0, 0, 0, extra))


def layers_of(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A cache's per-layer (keys, values) [B, kv, S, d]."""
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]


def cache_of(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], config: PretrainedConfig) -> DynamicCache:
    """A cache holding these per-layer keys/values [B, kv, S, d] (an empty one when S is 0)."""
    if not layers or layers[0][0].shape[-2] == 0:
        return DynamicCache(config=config)
    return DynamicCache(ddp_cache_data=list(layers), config=config)


def run_after_prefix(
    base: FrozenModel,
    cache: DynamicCache,
    prefix_mask: torch.Tensor,
    token_states: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    start: int = 0,
    stop: int | None = None,
) -> tuple[torch.Tensor, DynamicCache]:
    """Hidden states [B, T, H] of left-padded rows after per-row prefixes already in ``cache``.

    Row b attends to ``[prefix slots where prefix_mask[b] is 1][its tokens]``: the masked slots
    (a shorter prefix's zero padding, the row's left padding) are never attended, and positions
    go on from the row's own prefix length, so every row sees exactly what it would see alone.
    prefix_mask: [B, S] over the cache's slots; token_mask: [B, T]. ``token_states`` are the
    states entering layer ``start``: token embeddings, or (a late prompt's reuse) the frozen
    layers' output; ``stop`` as in :func:`run_decoder`. ``cache`` grows by T slots in every layer run.
    """
    mask = torch.cat([prefix_mask, token_mask], dim=1)  # [B, S + T]
    positions = prefix_mask.sum(dim=1, keepdim=True) + mask_positions(token_mask)  # [B, T]
    return run_decoder(base, token_states, mask, positions, cache, use_cache=True, start=start, stop=stop)


def lm_logits(base: FrozenModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] as the family's causal-LM forward computes them from hidden states [..., H]."""
    family = base.family
    logits = base.model.get_output_embeddings()(hidden)
    if family.logit_scale != 1.0:
        logits = logits * family.logit_scale
    if family.softcap:
        logits = torch.tanh(logits / family.softcap) * family.softcap
    return logits
