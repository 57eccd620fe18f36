"""Turn last-position logits into next tokens, each row with its own sampling parameters.

Greedy rows without a repetition penalty (the common case) take one batched argmax; other rows
are handled one by one with their own random generator, so a request's seeded output does not
depend on which other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from softprompt.inference.engine.sequence import SamplingParams, Sequence, TokenLogprob

# Prompt positions per LM-head call when scoring a prompt: bounds the [positions, vocab] logits.
PROMPT_CHUNK = 256
# Floor for reported log-probabilities, so JSON never carries -Infinity (vLLM uses the same).
MIN_LOGPROB = -9999.0


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
    record_logprobs(logits, seqs, tokens)
    return tokens


def record_logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> None:
    """Append each chosen token's log-probability to the rows that ask for it (``params.logprobs``).

    They are taken from the raw logits, so they describe the model, not the sampling settings.
    """
    rows = [row for row, seq in enumerate(seqs) if seq.params.logprobs is not None]
    if not rows:
        return
    logp = torch.log_softmax(logits[rows], dim=-1)
    for i, row in enumerate(rows):
        k = seqs[row].params.logprobs or 0
        seqs[row].logprobs.extend(_ranked(logp[i : i + 1], torch.tensor([tokens[row]]), k))


def prompt_logprobs(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor, k: int
) -> list[TokenLogprob]:
    """Log-probabilities of ``targets`` [N] given the hidden states [N, H] that predict them, in chunks."""
    out: list[TokenLogprob] = []
    for start in range(0, hidden.shape[0], PROMPT_CHUNK):
        logp = torch.log_softmax(head(hidden[start : start + PROMPT_CHUNK]).float(), dim=-1)
        out += _ranked(logp, targets[start : start + PROMPT_CHUNK].to(logp.device), k)
    return out


def _ranked(logp: torch.Tensor, targets: torch.Tensor, k: int) -> list[TokenLogprob]:
    """logp [N, V], targets [N] -> each target's log-probability and the k best (id, log-probability)."""
    chosen = logp.gather(1, targets[:, None])[:, 0].clamp(min=MIN_LOGPROB).tolist()
    best = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    values, ids = best.values.clamp(min=MIN_LOGPROB).tolist(), best.indices.tolist()
    return [TokenLogprob(int(t), lp, tuple(zip(i, v))) for t, lp, i, v in zip(targets.tolist(), chosen, ids, values)]


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
