"""Text tasks: what a method writes, and how close it comes to the references.

Every method is a :class:`Writer`: a base model (carrying its own trained weights for LoRA and
full fine-tuning), one soft prompt per member (or none) and a text context before every input
(prompt engineering's instruction and examples). The same three things give

- the reference cross-entropy: each reference's tokens (the ones training learns, end-of-text
  included) scored after the input, through the engine's scorer (prefix keys/values once per
  member), summed per input so that a test set can be resampled by input;
- the generations: greedy, the preset's stop rule and length cap, through the engine's one decode
  loop (:func:`softprompt.inference.generate.complete`), every member's rows in one batch;
- BLEU and chrF by sacrebleu, ROUGE-L by rouge-score, against every reference of an input.

Per-input statistics (sacrebleu's sufficient statistics, ROUGE-L per input, summed negative
log-likelihood and token count) are kept so that a metric of any resample of inputs, or a paired
difference between two methods, is computed by the libraries' own formulas
(:func:`metric_of`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from softprompt.core.data import DataConfig, Example, Row, left_pad, start_tokens, tokenize_row
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX
from softprompt.inference.generate import GenerateConfig, complete
from softprompt.measuring.classify import Scorer, engine_scorer
from softprompt.measuring.presets import TARGET_COLUMN, TextPreset

GENERATION_METRICS = ("bleu", "chrf", "rougeL")
METRICS = ("ce", *GENERATION_METRICS)
LOWER_IS_BETTER = {"ce"}
WRITE_CHUNK = 64  # sequences per engine run: keeps the batch's keys/values within a few hundred MB
LOGITS_BYTES = 256 << 20  # scoring batches are cut so their logits stay under this


@dataclass(frozen=True)
class Item:
    """One input and every correct output of it."""

    row: Row  # the (first) row it came from: its template's fields
    text: str  # the filled template
    references: list[str]


def items(preset: TextPreset, rows: Sequence[Row], where: str) -> list[Item]:
    """Inputs of ``rows`` with their references: rows sharing the preset's group column are one input
    (training files hold a row per reference), else each row with its reference list (or target)."""
    found: dict[str, Item] = {}
    for i, row in enumerate(rows):
        at = f"{where} {i + 1}"
        text = preset.fill(row)
        if preset.group_column is None:
            found[str(i)] = Item(row, text, preset.references(row, at))
            continue
        key = str(row.get(preset.group_column))
        if key in found:
            found[key].references.append(preset.answer(row, at))
        else:
            found[key] = Item(row, text, preset.references(row, at))
    return list(found.values())


@dataclass
class Writer:
    """What one method writes with (the module docstring says why these three things are enough)."""

    base: FrozenModel
    prompts: list[Prompt | None] = field(default_factory=lambda: [None])
    context: str = ""

    @property
    def members(self) -> int:
        return len(self.prompts)

    def scorer(self) -> Scorer:
        return engine_scorer(self.base, self.prompts, self.context)

    @torch.inference_mode()
    def write(self, texts: Sequence[str], preset: TextPreset) -> list[list[str]]:
        """Greedy outputs, [member][row], cut at the preset's stop strings and stripped."""
        config = GenerateConfig(max_new_tokens=preset.max_new_tokens, stop=preset.stop)
        jobs = [(m, r) for m in range(self.members) for r in range(len(texts))]
        out: list[list[str]] = [[""] * len(texts) for _ in range(self.members)]
        for start in range(0, len(jobs), WRITE_CHUNK):
            chunk = jobs[start : start + WRITE_CHUNK]
            done = complete(
                self.base, [self.context + texts[r] for _, r in chunk], [self.prompts[m] for m, _ in chunk], config
            )
            for (m, r), completion in zip(chunk, done, strict=True):
                out[m][r] = completion.text.strip()
        return out


def reference_examples(preset: TextPreset, item: Item, tokenizer: Any, max_length: int) -> list[Example]:
    """Each reference of an input as training sees it: the filled template, then the reference and end-of-text."""
    data = DataConfig(template=preset.template, target_column=TARGET_COLUMN, max_length=max_length)
    return [tokenize_row({**item.row, TARGET_COLUMN: ref}, data, tokenizer, "reference") for ref in item.references]


@torch.inference_mode()
def reference_nll(
    writer: Writer, preset: TextPreset, inputs: Sequence[Item], max_length: int, batch_size: int = 16
) -> np.ndarray:
    """Summed negative log-likelihood and token count of every input's references: [members, inputs, 2]."""
    scorer, tokenizer = writer.scorer(), writer.base.tokenizer
    skip = len(start_tokens(tokenizer)) if scorer.prefix_starts else 0  # the context already starts the input
    pairs = [(i, e) for i, item in enumerate(inputs) for e in reference_examples(preset, item, tokenizer, max_length)]
    out = np.zeros((writer.members, len(inputs), 2))
    vocab = int(writer.base.model.config.vocab_size)
    order = sorted(range(len(pairs)), key=lambda p: -len(pairs[p][1].input_ids))
    start = 0
    while start < len(order):
        longest = _target_length(pairs[order[start]][1])
        rows = max(1, min(batch_size, LOGITS_BYTES // (4 * vocab * writer.members * (longest + 1))))
        chunk = [pairs[p] for p in order[start : start + rows]]
        found = _chunk_nll(scorer, [e for _, e in chunk], skip)  # [members, rows, 2]
        for k, (i, _) in enumerate(chunk):
            out[:, i] += found[:, k]
        start += rows
    return out


def _target_length(example: Example) -> int:
    return sum(label != IGNORE_INDEX for label in example.labels)


def _chunk_nll(scorer: Scorer, examples: list[Example], skip: int) -> np.ndarray:
    lengths = [_target_length(e) for e in examples]
    longest = max(max(lengths), 1)
    ids, mask = left_pad([e.input_ids[skip:] for e in examples], scorer.pad_id, scorer.device)
    logp = scorer.logits(ids, mask, longest + 1)[:, :-1].float().log_softmax(-1)  # [M*B, longest, V]
    wanted = ids[:, -longest:].repeat(scorer.members, 1)
    token_lp = logp.gather(-1, wanted[..., None]).squeeze(-1)
    n = torch.tensor(lengths, device=ids.device).repeat(scorer.members)
    in_target = torch.arange(longest, device=ids.device)[None, :] >= (longest - n)[:, None]
    nll = -(token_lp * in_target).sum(-1).view(scorer.members, len(examples)).cpu().numpy()
    counts = np.broadcast_to(np.asarray(lengths, dtype=np.float64), nll.shape)
    return np.stack([nll, counts], axis=-1)


# ---------------------------------------------------------------------------------------------
# Metrics from per-input statistics


def row_stats(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per input: sacrebleu's BLEU and chrF sufficient statistics, and ROUGE-L F1 against the best reference."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    width = max((len(r) for r in references), default=1)
    # sacrebleu takes reference streams; None marks an input with fewer references than the widest
    streams: Any = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return {
        "bleu": np.asarray(BLEU()._extract_corpus_statistics(list(outputs), streams), dtype=np.float64),
        "chrf": np.asarray(CHRF()._extract_corpus_statistics(list(outputs), streams), dtype=np.float64),
        "rougeL": np.asarray(
            [rouge.score_multi(list(refs), out)["rougeL"].fmeasure for out, refs in zip(outputs, references)]
        ),
    }


def metric_of(name: str, stats: dict[str, np.ndarray]) -> Callable[[np.ndarray], float]:
    """The metric over any subset of inputs (an index array, repeats allowed), by the libraries' formulas."""
    if name == "ce":
        nll = stats["nll"]
        return lambda idx: float(nll[idx, 0].sum() / max(nll[idx, 1].sum(), 1.0))
    if name == "rougeL":
        values = stats["rougeL"]
        return lambda idx: float(100 * values[idx].mean())
    from sacrebleu.metrics import BLEU, CHRF

    metric = BLEU() if name == "bleu" else CHRF()
    table = stats[name]
    return lambda idx: float(metric._compute_score_from_stats(table[idx].sum(0).tolist()).score)


def scores(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Every metric over every input, and the perplexity that the cross-entropy gives."""
    every = np.arange(len(stats["nll"]))
    found = {name: metric_of(name, stats)(every) for name in METRICS if name in stats or name == "ce"}
    found["ppl"] = math.exp(min(found["ce"], 50.0))
    return found
