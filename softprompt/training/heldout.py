"""Scoring: mean token cross-entropy of held-out rows, the number every training run reports.

Tokens 1..n-1 of each row are scored, with or without a soft prompt: the bare model has
nothing to predict a row's first token from, so leaving it out keeps "before" and "after"
the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from softprompt.core.data import Example, batches
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.prompted import Tunable
from softprompt.training import distributed, sharding
from softprompt.training.passes import keep_in_step


def without_first_token(example: Example) -> Example:
    return Example(example.input_ids, [IGNORE_INDEX] + example.labels[1:])


@torch.no_grad()
def mean_token_loss(model: Tunable, examples: list[Example], batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over the labelled tokens; NaN when there are none."""
    return mean_token_losses([model], examples, batch_size)[0]


@torch.no_grad()
def mean_token_losses(models: Sequence[Tunable], examples: list[Example], batch_size: int = 8) -> list[float]:
    """:func:`mean_token_loss` of each model over the same rows, in shared passes.

    Each pass holds a batch once per model, every copy attending to its own model's prompt, so each
    number is the one that model alone would get (models that cannot share a pass, one model at a
    time). Under torchrun each process scores every world_size-th batch; the sums are then added up.
    """
    if not examples:
        return [math.nan] * len(models)
    totals, counts = [0.0] * len(models), [0] * len(models)
    scored = [without_first_token(e) for e in examples]
    base = models[0].base
    everyone = list(batches(scored, batch_size, base.tokenizer.pad_token_id))
    mine = distributed.shard_list(everyone)
    for batch in mine:
        batch = batch.to(base.device)
        rows = batch.input_ids.shape[0]
        owners = [k for k in range(len(models)) for _ in range(rows)]
        copies = [t.repeat(len(models), 1) for t in (batch.input_ids, batch.attention_mask, batch.labels)]
        for k, result in enumerate(models[0].joint_loss(models, owners, *copies)):
            if result is not None:
                totals[k], counts[k] = totals[k] + float(result[0]), counts[k] + result[1]
    if sharding.is_sharded(base.model):  # rank 0 has the most batches: the others keep in step
        idle = len(everyone[:: distributed.world_size()]) - len(mine)
        first = everyone[0].to(base.device)
        keep_in_step(models[0], first.input_ids, first.attention_mask, first.labels, idle)
    sums = distributed.global_sums(*totals, *counts)
    summed, tokens = sums[: len(models)], sums[len(models) :]
    return [total / count if count else math.nan for total, count in zip(summed, tokens, strict=True)]
