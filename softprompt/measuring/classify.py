"""Rank classification: score every label's verbalisation by log-likelihood, pick the best.

No free-generation parsing: for each row the model scores ``" " + word`` for every label word
after the templated input, and the label with the highest summed log-probability wins
(Brown et al., 2020, section 2; the "rank classification" of Sanh et al., 2022). When every
label word is a single token, all labels of a row come from one forward pass (the next-token
distribution at the last input position); otherwise each (row, label) pair is one sequence
and all pairs of a batch of rows go through the model together.

A :class:`Scorer` hides what is being scored: the bare model, soft prompts (several at once:
each row is repeated once per prompt and :func:`softprompt.inject.inject` gives every copy its
own prompt, so an ensemble costs one batched pass), or any Hugging Face / PEFT model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.data import left_pad
from softprompt.core.errors import ConfigError
from softprompt.core.inject import inject
from softprompt.core.model import lm_logits, run_decoder
from softprompt.core.models import BaseModel

# (input_ids [B, T] left-padded, attention_mask [B, T], keep) -> logits [members * B, keep, vocab]
# of the last ``keep`` positions, member-major (all rows of member 0, then member 1, ...).
LogitsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Scorer:
    logits: LogitsFn
    pad_id: int
    members: int = 1  # prompts (ensemble members) scored per row


def prompt_scorer(base: BaseModel, prompts: Sequence[torch.Tensor | None]) -> Scorer:
    """The base model with each of ``prompts`` (None: no prompt); all members in one pass."""
    members = list(prompts) or [None]

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        rows = ids.shape[0]
        token_embeds = base.model.get_input_embeddings()(ids).repeat(len(members), 1, 1)  # [M*B, T, H]
        per_row = [p for p in members for _ in range(rows)]
        injected = inject(token_embeds, mask.repeat(len(members), 1), per_row)
        hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
        return lm_logits(base, hidden[:, -keep:])

    return Scorer(logits, int(base.tokenizer.pad_token_id), len(members))


def prefix_scorer(base: BaseModel, prefix: torch.Tensor) -> Scorer:
    """One shared prefix [P, H] (a soft prompt, a context's token embeddings, or both) for every row.

    Under causal attention the prefix's keys and values do not depend on what follows, so they
    are computed once (batch of one) and repeated for each batch: a 4-shot context costs one
    forward pass in total instead of one per row. Rows attend to ``[prefix][padding][tokens]``
    with positions counting on from the prefix, the same as :func:`inject`'s layout.
    """
    length = prefix.shape[0]
    with torch.no_grad():
        ones = torch.ones(1, length, dtype=torch.long, device=base.device)
        positions = torch.arange(length, device=base.device)[None]
        _, shared = run_decoder(base, prefix[None].to(base.device, base.dtype), ones, positions, use_cache=True)

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        cache = copy.deepcopy(shared)
        cache.batch_repeat_interleave(ids.shape[0])
        full_mask = torch.cat([mask.new_ones(ids.shape[0], length), mask], dim=1)  # [B, P + T]
        position_ids = length + (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = base.model.get_input_embeddings()(ids)
        hidden, _ = run_decoder(base, embeds, full_mask, position_ids, cache, use_cache=True)
        return lm_logits(base, hidden[:, -keep:])

    return Scorer(logits, int(base.tokenizer.pad_token_id))


def shared_scorer(base: BaseModel, prompts: Sequence[torch.Tensor | None], context: str = "") -> Scorer:
    """The fastest correct scorer: a cached prefix for one prompt (and/or a text context),
    one batched pass over all members for an ensemble."""
    context_ids = encode(base.tokenizer, context) if context else []
    if len(prompts) > 1:
        if context_ids:
            raise ConfigError("an ensemble of soft prompts cannot share a text context; put it in the inputs")
        return prompt_scorer(base, prompts)
    parts = [p.to(base.device, base.dtype) for p in prompts if p is not None]
    if context_ids:
        with torch.no_grad():
            parts.append(base.model.get_input_embeddings()(torch.tensor(context_ids, device=base.device)))
    return prefix_scorer(base, torch.cat(parts)) if parts else prompt_scorer(base, [None])


def hf_scorer(model: torch.nn.Module, pad_id: int, accepts_position_ids: bool = True) -> Scorer:
    """Any causal LM called with input ids (a PEFT LoRA or prefix model, a fine-tuned model).

    Position ids are derived from the mask, as generation does, so left padding does not shift
    the positions of short rows.
    """

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if accepts_position_ids else {}
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits

    return Scorer(logits, pad_id)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    ids = [encode(tokenizer, " " + w) for w in words]
    for word, tokens in zip(words, ids):
        if not tokens:
            raise ConfigError(f"label word {word!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def score_labels(
    scorer: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    words: Sequence[str],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    max_length: int = 512,
) -> torch.Tensor:
    """Summed log p(" " + word | text) for every member, row and label: [members, N, K].

    Inputs longer than ``max_length`` tokens keep their end (next to where the label goes).
    """
    labels = label_ids(tokenizer, words)
    contexts = [encode(tokenizer, t)[-max_length:] for t in texts]
    if any(not c for c in contexts):
        raise ConfigError("an input text tokenizes to nothing; rank classification needs some context")
    order = sorted(range(len(texts)), key=lambda i: -len(contexts[i]))  # little padding per batch
    scores = torch.empty(scorer.members, len(texts), len(labels))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scores[:, chunk] = _score_chunk(scorer, [contexts[i] for i in chunk], labels, torch.device(device))
    return scores


def _score_chunk(
    scorer: Scorer, contexts: list[list[int]], labels: list[list[int]], device: torch.device
) -> torch.Tensor:
    rows, k = len(contexts), len(labels)
    if all(len(label) == 1 for label in labels):
        # One pass: the next-token distribution after the input scores every label at once.
        ids, mask = left_pad(contexts, scorer.pad_id, device)
        logp = scorer.logits(ids, mask, 1)[:, -1].float().log_softmax(-1)  # [M*B, V]
        first = torch.tensor([label[0] for label in labels], device=logp.device)
        return logp[:, first].view(scorer.members, rows, k).cpu()
    longest = max(len(label) for label in labels)
    seqs = [c + label for c in contexts for label in labels]  # [B*K], row-major
    ids, mask = left_pad(seqs, scorer.pad_id, device)
    # The last `longest` tokens of every sequence hold its label, right-aligned; they are
    # predicted by the `longest` positions just before them.
    logp = scorer.logits(ids, mask, longest + 1)[:, :-1].float().log_softmax(-1)  # [M*B*K, longest, V]
    wanted = ids[:, -longest:].repeat(scorer.members, 1)  # [M*B*K, longest]
    token_lp = logp.gather(-1, wanted[..., None]).squeeze(-1)
    lengths = torch.tensor([len(label) for label in labels], device=ids.device).repeat(rows * scorer.members)
    in_label = torch.arange(longest, device=ids.device)[None, :] >= (longest - lengths)[:, None]
    return (token_lp * in_label).sum(-1).view(scorer.members, rows, k).cpu()


# ---------------------------------------------------------------------------------------------
# Votes and metrics


def vote(scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Predictions [N] from member scores [M, N, K]: mean log-prob, or majority of member argmaxes.

    Majority ties go to the label with the higher mean log-probability.
    """
    normalised = scores.log_softmax(-1)  # each member's distribution over the labels
    mean = normalised.mean(0)  # [N, K]
    if how == "mean":
        return mean.argmax(-1)
    if how == "majority":
        votes = torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).sum(0).float()  # [N, K]
        return (votes + 1e-3 * mean.softmax(-1)).argmax(-1)
    raise ConfigError(f"vote must be 'mean' or 'majority', got {how!r}")


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    return sum(int(p == g) for p, g in zip(pred, gold)) / max(len(gold), 1)


def macro_f1(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over all classes (absent, never-predicted classes score 0)."""
    f1s = []
    for c in range(num_labels):
        tp = sum(1 for p, g in zip(pred, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(pred, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(pred, gold) if p != c and g == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / num_labels


def metrics(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, num_labels)}


@dataclass
class Classified:
    scores: torch.Tensor  # [members, N, K]
    seconds: float

    @property
    def ms_per_example(self) -> float:
        return 1000 * self.seconds / max(self.scores.shape[1], 1)


def classify(
    scorer: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    words: Sequence[str],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> Classified:
    started = time.perf_counter()
    scores = score_labels(scorer, tokenizer, texts, words, batch_size, device)
    return Classified(scores, time.perf_counter() - started)
