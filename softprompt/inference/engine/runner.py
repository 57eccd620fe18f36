"""The model runner: the only part that calls the model or holds device state.

It computes prompt KV for adapters, prefills newly admitted sequences on top of their prompt KV,
runs one decode step for the whole running batch, and keeps the batch cache and each
sequence's random generator. Which sequences to run is decided elsewhere (scheduler, engine).
"""

from __future__ import annotations

from functools import partial

import torch

from softprompt.core.data import left_pad
from softprompt.core.decoder import (
    cache_of,
    embed_tokens,
    layers_of,
    lm_logits,
    prompt_cache,
    run_after_prefix,
    run_decoder,
)
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.inference.engine.kv import BatchKV, PromptKV, admit, drop, prefill_groups, prompt_prefix
from softprompt.inference.engine.sampler import new_generator, prompt_logprobs, sample
from softprompt.inference.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, base: FrozenModel, max_rows: int = 32) -> None:
        self.base = base
        self.max_rows = max_rows  # most rows the batch cache keeps room for (the engine's batch size)
        self.config = base.model.config
        self.pad_id = base.pad_id if base.tokenizer.pad_token_id is not None else 0
        self.batch: BatchKV | None = None
        self.generators: dict[int, torch.Generator] = {}

    @property
    def kv_key(self) -> str:
        """Prompt KV depends on the model's dtype and device, so it is cached per pair."""
        return f"{self.base.dtype}@{self.base.device}"

    @torch.no_grad()
    def prompt_kv(self, prompt: Prompt) -> PromptKV:
        """Every layer's keys/values of a prompt of any form (vectors [P, H] run alone from position 0)."""
        prefix = prompt_cache(self.base, [prompt])
        return PromptKV(tuple((k[0].clone(), v[0].clone()) for k, v in layers_of(prefix.cache)))

    @torch.no_grad()
    def prefix_kv(self, prompt: Prompt | None, context_ids: list[int]) -> PromptKV | None:
        """Keys/values of a prompt (or none) followed by context tokens: a member of a scorer's ensemble."""
        kv = None if prompt is None else self.prompt_kv(prompt)
        if not context_ids:
            return kv
        ids = torch.tensor([context_ids], device=self.base.device)
        _, batch = self._forward(ids, torch.ones_like(ids), [kv])
        return PromptKV(tuple((k[0].clone(), v[0].clone()) for k, v in layers_of(batch.cache)))

    def _forward(
        self, ids: torch.Tensor, token_mask: torch.Tensor, prompts: list[PromptKV | None]
    ) -> tuple[torch.Tensor, BatchKV]:
        """Left-padded rows [B, T] after their prompt KV: hidden states [B, T, H] and the batch cache."""
        device = self.base.device
        prefix, prefix_mask = prompt_prefix(prompts, device)  # per layer [B, h, Pmax, d]; [B, Pmax]
        cache = cache_of(prefix, self.config)
        hidden, cache = run_after_prefix(self.base, cache, prefix_mask, embed_tokens(self.base, ids), token_mask)
        batch = BatchKV(
            seq_ids=[],
            cache=cache,
            mask=torch.cat([prefix_mask, token_mask], dim=1),
            next_position=prefix_mask.sum(dim=1) + token_mask.sum(dim=1),
            last_token=ids[:, -1],
        )
        return hidden, batch

    @torch.no_grad()
    def score(self, ids: torch.Tensor, mask: torch.Tensor, prompts: list[PromptKV | None], keep: int) -> torch.Tensor:
        """Logits [B, keep, V] of left-padded rows' last ``keep`` positions after their prompt KV; nothing is kept."""
        hidden, _ = self._forward(ids.to(self.base.device), mask.to(self.base.device), prompts)
        return lm_logits(self.base, hidden[:, -keep:])

    @torch.no_grad()
    def prefill(self, seqs: list[Sequence], prompts: list[PromptKV | None]) -> list[int]:
        """Prefill ``seqs`` after their prompt KV, sample their first tokens, and join the running batch.

        Rows of similar length are prefilled together (:func:`~softprompt.inference.engine.kv.prefill_groups`),
        so little compute goes to left padding; each row's result is what it would be alone. Each group
        joins the batch cache as it is done (:func:`~softprompt.inference.engine.kv.admit`), the longest
        first so that the others fit in its width.
        """
        tokens = [0] * len(seqs)
        needed = len(seqs) + (0 if self.batch is None else len(self.batch))
        capacity = max(needed, min(2 * needed, self.max_rows))  # rows to grow into, should the cache move
        room = max(s.params.max_new_tokens for s in seqs)  # merge caps it; a longer request grows the cache
        for group in reversed(prefill_groups([len(s.prompt_ids) for s in seqs])):
            rows = [seqs[i] for i in group]
            ids, token_mask = left_pad([s.prompt_ids for s in rows], self.pad_id, self.base.device)  # newest last
            hidden, new = self._forward(ids, token_mask, [prompts[i] for i in group])
            self.score_prompts(rows, hidden, ids)
            for seq in rows:
                self.generators[seq.seq_id] = new_generator(seq.params.seed, self.base.device)
            chosen = sample(lm_logits(self.base, hidden[:, -1]).float(), rows, self.generators)
            new.seq_ids = [s.seq_id for s in rows]
            new.last_token = torch.tensor(chosen, dtype=torch.long, device=self.base.device)
            self.batch = admit(self.batch, new, self.config, room, capacity)
            for i, token in zip(group, chosen):
                tokens[i] = token
        return tokens

    def score_prompts(self, seqs: list[Sequence], hidden: torch.Tensor, ids: torch.Tensor) -> None:
        """Log-probabilities of each prompt token after the first, for sequences that ask (``prompt_logprobs``).

        Rows are left-padded, so a prompt of n tokens is the last n positions; position t predicts t + 1.
        """
        for row, seq in enumerate(seqs):
            k, n = seq.params.prompt_logprobs, len(seq.prompt_ids)
            if k is not None and n > 1:
                head = partial(lm_logits, self.base)
                seq.prompt_logprobs = prompt_logprobs(head, hidden[row, -n:-1], ids[row, -n + 1 :], k)

    @torch.no_grad()
    def decode(self, seqs: dict[int, Sequence]) -> list[int]:
        """Feed every running row its last token; returns the next token per row, in batch order."""
        batch = self.batch
        if batch is None or not len(batch):
            return []
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        embeds = embed_tokens(self.base, batch.last_token[:, None])  # [B, 1, H]
        hidden, batch.cache = run_decoder(
            self.base, embeds, batch.mask, batch.next_position[:, None], batch.cache, use_cache=True
        )
        batch.next_position = batch.next_position + 1
        rows = [seqs[i] for i in batch.seq_ids]
        tokens = sample(lm_logits(self.base, hidden[:, -1]).float(), rows, self.generators)
        batch.last_token = torch.tensor(tokens, dtype=torch.long, device=self.base.device)
        return tokens

    def release(self, finished: set[int]) -> None:
        """Drop finished rows from the batch cache (and their generators)."""
        for seq_id in finished:
            self.generators.pop(seq_id, None)
        if self.batch is not None:
            self.batch = drop(self.batch, finished, self.config)

    @property
    def row_ids(self) -> list[int]:
        return [] if self.batch is None else list(self.batch.seq_ids)
