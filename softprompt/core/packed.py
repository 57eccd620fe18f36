"""Padding-free training passes: soft prompts and a batch's rows packed into one sequence.

The rows run as ``[prompt 0][prompt 1]...[row 0][row 1]...`` in a single [1, N, H] pass, so every
projection is one matmul over all real tokens: no padding, no separate batch-1 pass for a prompt,
no cache concatenation. Only attention needs to know the layout, so a registered transformers
attention function lets each row attend to its own prompt (its ``owner``) and to its own earlier
tokens, with positions P, P + 1, ... as in the injected layout. One prompt is ordinary training;
several are a sweep's candidates trained in the same passes (:func:`softprompt.training.train.train_sweep`),
each row seeing exactly what it would see in its candidate's run alone. Only families listed in
:data:`softprompt.core.family.PACKABLE` attend through that interface; the others keep the
shared-prefix layout of :mod:`softprompt.core.layouts`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from softprompt.core.decoder import embed_tokens, layer_span
from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX

ATTENTION = "softprompt_packed"


@dataclass
class Packing:
    """The packed sequence's layout: prompts of lengths ``prompts``, then rows of ``lengths``; row r
    belongs to prompt ``owners[r]``. ``external[i]``: prompt i's own keys/values (a ``kv`` prompt),
    [layers - entry, 2, kv, P, d] for the layers from ``entry`` up, used in place of what its slots compute."""

    prompts: list[int]
    lengths: list[int]
    owners: list[int]
    external: list[torch.Tensor | None] = field(default_factory=list)
    entry: int = 0
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def keys_values(self, index: int, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Prompt ``index``'s own keys and values [1, kv, P, d] in ``layer``, if it brings them."""
        weights = self.external[index] if self.external else None
        if weights is None:
            return None
        if layer < 0:
            raise ConfigError("this family's attention modules do not say their layer; kv prompts cannot be packed")
        if layer < self.entry:
            return None
        pair = weights[layer - self.entry].to(dtype)
        return pair[0][None], pair[1][None]

    def mask(self, n_prompt: int, length: int, device: torch.device) -> torch.Tensor:
        """[T, P + T] bool: token i sees the whole prompt and tokens 0..i of its own row."""
        if (n_prompt, length) not in self._masks:
            cols = torch.arange(n_prompt + length, device=device)
            self._masks[n_prompt, length] = cols[None, :] <= torch.arange(length, device=device)[:, None] + n_prompt
        return self._masks[n_prompt, length]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    packing: Packing,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over a packed [1, heads, N, d] sequence; returns [1, N, heads, d] as transformers expects."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: kv head h serves query heads h*groups .. h*groups+groups-1
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # split, not slicing: its backward is one concatenation, where each slice's backward would
    # write its gradient into a zero tensor the size of the whole sequence
    sizes = [*packing.prompts, *packing.lengths]
    queries, keys, values = (list(t.split(sizes, dim=2)) for t in (query, key, value))
    n = len(packing.prompts)
    for i in range(n):  # a kv prompt's slots compute nothing that is used: its own keys/values replace theirs
        own = packing.keys_values(i, int(getattr(module, "layer_idx", -1)), key.dtype)
        if own is not None:
            keys[i], values[i] = (t.repeat_interleave(groups, dim=1) for t in own)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling
        )

    outputs = [attend(queries[i], keys[i], values[i], None) for i in range(n)]  # each prompt: causal, alone
    for owner, q, k, v in zip(packing.owners, queries[n:], keys[n:], values[n:], strict=True):
        mask = packing.mask(packing.prompts[owner], q.shape[2], query.device)
        outputs.append(attend(q, torch.cat([keys[owner], k], dim=2), torch.cat([values[owner], v], dim=2), mask))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, packed_attention)


@contextmanager
def _packed_attention(base: FrozenModel) -> Iterator[None]:
    """Switch the model to :func:`packed_attention` for one forward pass (backward needs no lookup)."""
    config = base.model.config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_hidden(
    base: FrozenModel,
    prompts: Sequence[Prompt],
    owners: list[int],
    rows: list[torch.Tensor],
    row_labels: list[torch.Tensor],
    row_states: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and labels [1, M] of unpadded rows, row r after prompt ``owners[r]``, for ``token_nll``.

    The result is laid out as ``[last 0][row 0][last 1][row 1]...`` with ``last r`` the final state
    of row r's prompt and an ignored label before each row, so that under the usual shift it
    predicts the row's first token and no row predicts the next row's: row r takes
    ``1 + len(row r)`` positions, in the rows' order. A ``kv`` prompt's slots are placeholders
    whose keys/values are replaced by its own in every layer from its entry up (``last`` is then
    zeros: such a prompt predicts no first token). All prompts enter at the same layer k. Without
    ``row_states`` every layer runs and a late prompt's slots hold its frozen inputs below k; with
    them (each row's states entering layer k, [n_r, H]) only layers k and up run.
    """
    entry = prompts[0].entry
    n_prompts = [prompt.num_virtual_tokens for prompt in prompts]
    width = base.hidden_size
    start = entry if row_states is not None else 0
    tokens = embed_tokens(base, torch.cat(rows)) if row_states is None else torch.cat(row_states)
    lengths = [len(row) for row in rows]
    states = packed_states(base, prompts, owners, tokens, lengths, start, base.num_layers)
    lasts = [
        prompt_states[-1:] if prompt.form is Form.VECTORS else prompt_states.new_zeros(1, width)
        for prompt, prompt_states in zip(prompts, states[: len(n_prompts)], strict=True)
    ]
    pieces = [piece for o, row in zip(owners, states[len(n_prompts) :], strict=True) for piece in (lasts[o], row)]
    ignore = row_labels[0].new_full((1,), IGNORE_INDEX)
    labels = torch.cat([piece for row in row_labels for piece in (ignore, row)])
    return torch.cat(pieces)[None], labels[None]


def packed_states(
    base: FrozenModel,
    prompts: Sequence[Prompt],
    owners: list[int],
    tokens: torch.Tensor,
    lengths: list[int],
    start: int,
    stop: int,
) -> tuple[torch.Tensor, ...]:
    """One padding-free pass over layers ``start`` .. ``stop`` - 1: prompts' slots, then rows of ``lengths``.

    ``tokens`` [sum(lengths), H] are the rows' states entering layer ``start``. Returns the states
    after the span (the last hidden state when ``stop`` is the depth; else those entering ``stop``),
    split per prompt, then per row.
    """
    entry = prompts[0].entry
    n_prompts = [prompt.num_virtual_tokens for prompt in prompts]
    slots = [_slot_inputs(base, prompt, at_entry=start == entry) for prompt in prompts]
    embeds = torch.cat([*(s.to(tokens.dtype) for s in slots), tokens])[None]  # [1, N, H]
    edit = None
    if start < entry < stop and any(p.form is Form.VECTORS for p in prompts):  # vectors replace their frozen slots
        edit = (entry, lambda states: _enter_vectors(prompts, states))
    positions = [torch.arange(n) for n in n_prompts]
    positions += [torch.arange(n_prompts[o], n_prompts[o] + n) for o, n in zip(owners, lengths, strict=True)]
    position_ids = torch.cat(positions).to(embeds.device)[None]
    external = [prompt.weights if prompt.form is Form.KV else None for prompt in prompts]
    packing = Packing(n_prompts, lengths, owners, external, entry)
    partial = bool(start or edit or stop < base.num_layers)
    span: AbstractContextManager[list[torch.Tensor]] = (
        layer_span(base, start, stop, embeds if start else None, edit) if partial else nullcontext([])
    )
    with _packed_attention(base), span as captured:
        out = base.model.base_model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False, packing=packing)
    hidden = out.last_hidden_state if stop == base.num_layers else captured[0]
    return hidden[0].split([*n_prompts, *lengths])


def _enter_vectors(prompts: Sequence[Prompt], states: torch.Tensor) -> torch.Tensor:
    """States [1, N, H] entering a late prompt's layer, each vectors prompt's slots replaced by its vectors."""
    pieces, offset = [], 0
    for prompt in prompts:
        n = prompt.num_virtual_tokens
        own = prompt.weights.to(states.dtype)[None] if prompt.form is Form.VECTORS else states[:, offset : offset + n]
        pieces.append(own)
        offset += n
    return torch.cat([*pieces, states[:, offset:]], dim=1)


def _slot_inputs(base: FrozenModel, prompt: Prompt, at_entry: bool) -> torch.Tensor:
    """What prompt slots hold where the pass starts: the vectors at their entry, frozen inputs below it,
    and placeholders for keys/values that are the prompt's own."""
    if at_entry:
        if prompt.form is Form.VECTORS:
            return prompt.weights
        return torch.zeros(prompt.num_virtual_tokens, base.hidden_size, device=base.device)
    if prompt.below is not None:
        return prompt.below
    if prompt.form is Form.VECTORS:
        return prompt.weights
    return torch.zeros(prompt.num_virtual_tokens, base.hidden_size, device=base.device)
