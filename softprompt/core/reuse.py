"""The frozen layers below a late prompt, computed once per row and reused by every step.

A late prompt (entry layer k > 0, :mod:`softprompt.core.forms`) changes nothing below layer k:
there a row's tokens attend only to themselves and to the prompt's frozen slots. So the states
a row brings to layer k are the same at every step, every epoch and every held-out evaluation
(and for every sweep candidate with the same frozen slots). :class:`FrozenRows` computes them the
first time a row is seen, in one pass over layers 0 .. k-1 for all of a batch's new rows, and
keeps them, up to a memory bound; rows past the bound are recomputed whenever they come back.
A training step then runs layers k .. L-1 only, forward and backward
(:func:`softprompt.core.layouts.layout_pieces` with ``entry_states``).

The states are kept in the model's dtype on its device, as the full pass would compute them, so
a prompt trained with reuse equals one trained without it (tests/training/test_reuse.py).
"""

from __future__ import annotations

import hashlib

import torch

from softprompt.core.decoder import cache_of, embed_tokens, layers_of, prompt_cache, run_after_prefix
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.packed import packed_states


class FrozenRows:
    """Rows' states entering ``prompt.entry``, keyed by their token ids; callable as the model's ``entry_states``."""

    def __init__(self, base: FrozenModel, prompt: Prompt, budget_bytes: int) -> None:
        if not prompt.entry or prompt.below is None:
            raise ValueError("only a late prompt (entry layer > 0) has frozen layers to reuse")
        self.base, self.entry, self.budget = base, prompt.entry, budget_bytes
        self.slots = prompt.num_virtual_tokens
        self.below_inputs = prompt.below.to(base.device)
        with torch.no_grad():  # the frozen slots' keys/values in the layers below the entry
            below = prompt_cache(base, [Prompt(Form.VECTORS, prompt.below)])
        self._below = layers_of(below.cache)[: self.entry]  # per layer (keys, values) [1, kv, P, d]
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}
        self.held_bytes = 0
        self.computed_rows = 0  # rows run through the frozen layers (each kept one once, the others every time)
        self.reused_rows = 0

    @staticmethod
    def key(prompt: Prompt) -> str:
        """Prompts with equal keys share their rows' states: same entry layer and frozen slots."""
        assert prompt.below is not None
        digest = hashlib.sha256(prompt.below.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        return f"{prompt.entry}:{digest}"

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """States [B, T, H] entering the entry layer of these left-padded rows (zeros on padding)."""
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [tuple(ids[ids.shape[0] - n :].tolist()) for ids, n in zip(input_ids, lengths, strict=True)]
        missing = [row for row, key in enumerate(keys) if key not in self._rows]
        fresh = self._compute(input_ids[missing], attention_mask[missing]) if missing else None
        self.reused_rows += len(keys) - len(missing)
        out = torch.zeros(*input_ids.shape, self.base.hidden_size, dtype=self.base.dtype, device=self.base.device)
        computed = dict(zip(missing, range(len(missing)), strict=True))
        width = input_ids.shape[1]
        for row, (key, n) in enumerate(zip(keys, lengths, strict=True)):
            if row in computed:
                assert fresh is not None
                states = fresh[computed[row], fresh.shape[1] - n :]
                self._keep(key, states)
            else:
                states = self._rows[key]
            out[row, width - n :] = states
        return out

    def _compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run these rows through layers 0 .. entry-1 after the frozen slots: [b, t, H], trimmed to the longest.

        Padding-free where the family packs (most do), else after the slots' cached keys/values.
        """
        if self.base.family.packable:
            return self._packed(input_ids, attention_mask)
        width = int(attention_mask.sum(dim=1).max())
        ids, mask = input_ids[:, -width:], attention_mask[:, -width:]
        rows = ids.shape[0]
        layers = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self._below]
        prefix_mask = torch.ones(rows, self.slots, dtype=torch.long, device=ids.device)
        states, _ = run_after_prefix(
            self.base,
            cache_of(layers, self.base.model.config),
            prefix_mask,
            embed_tokens(self.base, ids),
            mask,
            stop=self.entry,
        )
        self.computed_rows += rows
        return states

    def _packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1).tolist()
        rows = [ids[ids.shape[0] - n :] for ids, n in zip(input_ids, lengths, strict=True)]
        slots = Prompt(Form.VECTORS, self.below_inputs)
        tokens = embed_tokens(self.base, torch.cat(rows))
        states = packed_states(self.base, [slots], [0] * len(rows), tokens, lengths, 0, self.entry)[1:]
        out = tokens.new_zeros(len(rows), max(lengths), tokens.shape[-1])
        for row, found in enumerate(states):
            out[row, out.shape[1] - found.shape[0] :] = found
        self.computed_rows += len(rows)
        return out

    def _keep(self, key: tuple[int, ...], states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        if self.held_bytes + size <= self.budget:
            self._rows[key] = states.clone()
            self.held_bytes += size
