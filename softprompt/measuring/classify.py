"""Rank classification: score every label's verbalisation by log-likelihood, pick the best.

No free-generation parsing: for each row the model scores ``" " + word`` for every label word
after the templated input, and the label with the highest summed log-probability wins
(Brown et al., 2020, section 2; the "rank classification" of Sanh et al., 2022). When every
label word is a single token, all labels of a row come from one forward pass (the next-token
distribution at the last input position); otherwise each (row, label) pair is one sequence
and all pairs of a batch of rows go through the model together.

A :class:`Scorer` hides what is being scored: the bare model or soft prompts with an optional
text context (several prompts at once: each row is repeated once per prompt, so an ensemble costs
one batched pass), through the engine's runner; the same with every prompt injected into every
row (the reference path the first is tested against); or any Hugging Face / PEFT model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.data import Row, encode_input, encode_text, left_pad
from softprompt.core.errors import ConfigError
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import mask_positions
from softprompt.core.prompt import SoftPrompt
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine.runner import ModelRunner
from softprompt.measuring.presets import Preset

# (input_ids [B, T] left-padded, attention_mask [B, T], keep) -> logits [members * B, keep, vocab]
# of the last ``keep`` positions, member-major (all rows of member 0, then member 1, ...).
LogitsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Scorer:
    logits: LogitsFn
    pad_id: int
    members: int = 1  # prompts (ensemble members) scored per row
    max_input_tokens: int | None = None  # under a sliding window: the longest input that stays exact
    prefix_starts: bool = False  # a text context before the rows already holds the tokenizer's start tokens
    device: torch.device = torch.device("cpu")  # where the scorer takes its ids: the model's device


def engine_scorer(base: FrozenModel, prompts: Sequence[Prompt | None], context: str = "") -> Scorer:
    """Score through the engine's runner: each member's prefix keys/values computed once, then reused.

    A member's prefix is its soft prompt (any form) followed by ``context`` (an instruction or
    k-shot examples); under causal attention it never sees the rows after it, so its keys/values
    are computed once per member and every batch attends to them, exactly as ``softprompt serve``
    does for an adapter. A 4-shot context costs one forward pass in total.
    """
    runner = ModelRunner(base)
    context_ids = encode_input(base.tokenizer, context) if context else []
    kvs = [runner.prefix_kv(None if p is None else p.detach(), context_ids) for p in list(prompts) or [None]]
    span = base.family.max_span
    longest_prefix = max((kv.length for kv in kvs if kv is not None), default=0)

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        rows = ids.shape[0]
        per_row = [kv for kv in kvs for _ in range(rows)]  # member-major
        return runner.score(ids.repeat(len(kvs), 1), mask.repeat(len(kvs), 1), per_row, keep)

    limit = None if span is None else span - longest_prefix
    return Scorer(logits, base.pad_id, len(kvs), limit, prefix_starts=bool(context_ids), device=base.device)


def model_scorer(base: FrozenModel, prompts: Sequence[Prompt | None]) -> Scorer:
    """The reference path: each member's prompt injected into every row (:meth:`SoftPromptModel.forward`)."""
    models = [
        SoftPromptModel(base, None if p is None else SoftPrompt.of(p.to(base.device))) for p in list(prompts) or [None]
    ]

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        return torch.cat([model(ids, mask, keep) for model in models])

    return Scorer(logits, base.pad_id, len(models), device=base.device)


def hf_scorer(model: torch.nn.Module, pad_id: int, accepts_position_ids: bool = True) -> Scorer:
    """Any causal LM called with input ids (a PEFT LoRA or prefix model, a fine-tuned model).

    Position ids are derived from the mask, as generation does, so left padding does not shift
    the positions of short rows.
    """

    def logits(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        extra = {"position_ids": mask_positions(mask)} if accepts_position_ids else {}
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits

    return Scorer(logits, pad_id, device=next(model.parameters()).device)


def label_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    ids = [encode_text(tokenizer, " " + w) for w in words]
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
    device: torch.device | str | None = None,
    max_length: int = 512,
) -> torch.Tensor:
    """Summed log p(" " + word | text) for every member, row and label: [members, N, K].

    Each input starts with the tokenizer's start tokens (a BOS for Llama and Gemma), unless the
    scorer's text context already does; inputs longer than ``max_length`` tokens keep their end
    (next to where the label goes).
    """
    labels = label_ids(tokenizer, words)
    if any(not encode_text(tokenizer, t) for t in texts):
        raise ConfigError("an input text tokenizes to nothing; rank classification needs some context")
    if scorer.prefix_starts:
        contexts = [encode_text(tokenizer, t)[-max_length:] for t in texts]
    else:
        contexts = [encode_input(tokenizer, t, max_length) for t in texts]
    longest = max((len(c) for c in contexts), default=0) + max(len(label) for label in labels)
    if scorer.max_input_tokens is not None and longest > scorer.max_input_tokens:
        raise ConfigError(
            f"an input plus its label takes {longest} tokens, but after the prompt and context only "
            f"{scorer.max_input_tokens} fit in the model's sliding attention window; "
            "use fewer shots, a shorter prompt or shorter inputs"
        )
    order = sorted(range(len(texts)), key=lambda i: -len(contexts[i]))  # little padding per batch
    scores = torch.empty(scorer.members, len(texts), len(labels))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scores[:, chunk] = _score_chunk(
            scorer, [contexts[i] for i in chunk], labels, torch.device(device or scorer.device)
        )
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


VOTES = ("mean", "majority")


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


def metrics(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1 over all classes; an absent,
    never-predicted class scores 0), by scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score

    if not gold:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    labels = list(range(num_labels))
    f1 = f1_score(gold, pred, labels=labels, average="macro", zero_division=0.0)
    return {"accuracy": float(accuracy_score(gold, pred)), "macro_f1": float(f1)}


@dataclass
class Classified:
    scores: torch.Tensor  # [members, N, K]
    seconds: float
    gold: list[int] = field(default_factory=list)  # each row's label index, when the rows carried one

    @property
    def ms_per_example(self) -> float:
        return 1000 * self.seconds / max(self.scores.shape[1], 1)

    def member_metrics(self) -> list[dict[str, float]]:
        """Per member (prompt): accuracy, macro-F1 and the mean cross-entropy of the gold label among the labels."""
        labels = self.scores.shape[-1]
        gold = torch.tensor(self.gold)
        out = []
        for member in self.scores:  # [N, K]
            found = metrics(member.argmax(-1).tolist(), self.gold, labels)
            found["label_loss"] = float(-member.log_softmax(-1)[torch.arange(len(gold)), gold].mean())
            out.append(found)
        return out


def classify_rows(
    scorer: Scorer,
    base: FrozenModel,
    preset: Preset,
    rows: Sequence[Row],
    batch_size: int,
    where: str = "row",
    prefix: str = "",
) -> Classified:
    """A preset's rows, each filled into its template (after ``prefix``), ranked over the label words."""
    texts = [prefix + preset.fill(row) for row in rows]
    gold = [preset.label_index(row, f"{where} {i + 1}") for i, row in enumerate(rows)]
    with torch.inference_mode():
        found = classify(scorer, base.tokenizer, texts, preset.words, batch_size, base.device)
    return replace(found, gold=gold)


def classify(
    scorer: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    words: Sequence[str],
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> Classified:
    started = time.perf_counter()
    scores = score_labels(scorer, tokenizer, texts, words, batch_size, device)
    return Classified(scores, time.perf_counter() - started)
