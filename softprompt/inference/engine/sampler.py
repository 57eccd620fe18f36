"""Turn last-position logits into next tokens, each row with its own sampling parameters.

Greedy rows without a repetition penalty (the common case) take one batched argmax; other rows
are handled one by one with their own random generator, so a request's seeded output does not
depend on which other requests share its batch.
"""

from __future__ import annotations

import torch

from softprompt.inference.engine.sequence import SamplingParams, Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator]) -> list[int]:
    """logits: [B, V] float32, row i for ``seqs[i]``; returns one token id per row."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        params = seq.params
        if params.greedy and params.repetition_penalty == 1.0:
            continue
        scores = logits[row]
        if params.repetition_penalty != 1.0:
            scores = penalize(scores, seq.prompt_ids + seq.output_ids, params.repetition_penalty)
        tokens[row] = int(scores.argmax()) if params.greedy else draw(scores, params, generators[seq.seq_id])
    return tokens


def penalize(scores: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: [V] -> [V]."""
    if not history:
        return scores
    ids = torch.tensor(sorted(set(history)), dtype=torch.long, device=scores.device)
    seen = scores[ids]
    return scores.scatter(0, ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def draw(scores: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Temperature, then top-k, then nucleus (top-p) filtering (Holtzman et al., 2020); scores: [V]."""
    greedy = int(scores.argmax())
    scores = scores / params.temperature
    if 0 < params.top_k < scores.shape[0]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        # A tiny temperature or penalty overflows the scores and softmax gives NaN: take the
        # greedy token, the limit of sampling as the temperature goes to 0.
        return greedy
    return int(torch.multinomial(probs, 1, generator=generator))


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
