"""Sweeps trained together: several prompt-tuning runs in the same forward and backward passes.

A sweep's candidates (learning rates, seeds, prompt lengths, inits, schedules, a residual MLP)
differ only in their prompts and optimizers; the frozen model is the same. So each candidate is an
ordinary run, its own :class:`~softprompt.training.loop.TrainingLoop` (prompt, AdamW, schedule,
shuffled batches, evaluations, early stopping, output directory, checkpoints), and only the
driver differs from :func:`~softprompt.training.train.train`: at every turn each running
candidate hands over its next batch, the batches go through the model together, every row
attending to its own candidate's prompt (:func:`softprompt.core.prompted.joint_loss`), each
candidate's loss divided by its own token count, and each loop then takes its own step. Held-out
evaluations are shared passes too. The base model is loaded once, and the matmuls see the rows of
every candidate at once.

Each candidate ends exactly where its run alone would (up to float summation order;
``tests/training/test_sweep.py``), including when it stops early, and a candidate whose loss
becomes non-finite fails alone. Its checkpoints are ordinary ones: an interrupted candidate
resumes alone with ``softprompt train --resume``. One process only (no torchrun, no FSDP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from softprompt.core.data import Batch, Example
from softprompt.core.errors import ConfigError, TrainingError, TrainingInterrupted
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.prompted import SoftPromptModel
from softprompt.training import distributed, sharding
from softprompt.training.heldout import mean_token_losses
from softprompt.training.loop import TrainingLoop
from softprompt.training.passes import backward_joint_loss
from softprompt.training.reuse import FrozenRows
from softprompt.training.train import TrainConfig, TrainResult, finish, keep_best, make_loop, scored_state

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One run of a sweep: its own prompt over the shared base, and its own settings."""

    model: SoftPromptModel
    config: TrainConfig
    run_info: dict[str, Any] = field(default_factory=dict)
    measure: Callable[[TrainingLoop], dict[str, float]] | None = None  # more numbers per evaluation (see TrainingLoop)


@dataclass
class SweepResult:
    """Per candidate, in order: its result, or the error that ended it (the others went on)."""

    results: list[TrainResult | TrainingError]
    seconds: float  # wall time of the whole sweep, evaluations included
    train_tokens: int  # real tokens backpropagated, every candidate's together


def train_sweep(candidates: list[Candidate], train_set: list[Example], eval_set: list[Example]) -> SweepResult:
    """Train every candidate on the same rows, in shared passes; each result equals its run alone."""
    _check(candidates)
    started = time.perf_counter()
    stores = _frozen_rows(candidates)
    loops = [
        make_loop(c.model, train_set, eval_set, c.config, c.run_info, frozen_rows=s, measure=c.measure)
        for c, s in stores
    ]
    for loop, loss in zip(loops, _heldout(loops), strict=True):
        loop.evaluate_before(loss)
    failed: dict[int, TrainingError] = {}
    try:
        while running := [i for i, loop in enumerate(loops) if loop.training and i not in failed]:
            _turn([loops[i] for i in running], running, failed)
    except KeyboardInterrupt:
        for i, loop in enumerate(loops):
            if i not in failed:
                loop.checkpoint()
        outputs = ", ".join(str(loop.output) for loop in loops)
        raise TrainingInterrupted(
            f"sweep interrupted; each candidate saved a checkpoint ({outputs}): "
            "continue any of them alone with softprompt train --resume DIR"
        ) from None
    finished = [loop for i, loop in enumerate(loops) if i not in failed]
    for loop in finished:
        keep_best(loop)
    known = {id(loop): scored_state(loop) for loop in finished}
    unscored = [loop for loop in finished if known[id(loop)] is None]
    known.update(zip([id(loop) for loop in unscored], _heldout(unscored) if unscored else [], strict=True))
    results: list[TrainResult | TrainingError] = [
        failed[i] if i in failed else finish(loop, known[id(loop)]) for i, loop in enumerate(loops)
    ]
    tokens = sum(loop.progress.real_tokens for loop in loops)
    return SweepResult(results, time.perf_counter() - started, tokens)


def _frozen_rows(candidates: list[Candidate]) -> list[tuple[Candidate, FrozenRows | None]]:
    """Late prompts with the same frozen layers (entry layer and frozen slots) share their rows' states."""
    stores: dict[str, FrozenRows] = {}
    out: list[tuple[Candidate, FrozenRows | None]] = []
    for candidate in candidates:
        prompt = candidate.model.require_prompt().frozen()
        if not prompt.entry or not candidate.config.reuse_frozen:
            out.append((candidate, None))
            continue
        key = FrozenRows.key(prompt)
        if key not in stores:
            stores[key] = FrozenRows(candidate.model.base, prompt, candidate.config.frozen_cache_mb << 20)
        out.append((candidate, stores[key]))
    return out


def _check(candidates: list[Candidate]) -> None:
    if not candidates:
        raise ConfigError("a sweep needs at least one candidate")
    base = candidates[0].model.base
    if any(c.model.base is not base for c in candidates):
        raise ConfigError("a sweep's candidates must share one loaded base model")
    if distributed.world_size() > 1 or sharding.is_sharded(base.model):
        raise ConfigError("sweeps train in one process: run them without torchrun/accelerate and without --shard")
    outputs = [c.config.output for c in candidates]
    if len(set(outputs)) != len(outputs):
        raise ConfigError(f"every candidate of a sweep needs its own output directory, got {outputs}")


def _turn(loops: list[TrainingLoop], indices: list[int], failed: dict[int, TrainingError]) -> None:
    """One turn: the evaluations that are due (together), else one batch of every running loop (together).

    Loops whose prompts enter at the same layer share passes. Each is charged, as training time,
    its share of a shared pass (its rows' token slots over all of them), so a time budget is
    machine time per candidate whether candidates train alone or together.
    """
    wanted = [loop.take_batch() for loop in loops]
    due = [loop for loop, batch in zip(loops, wanted, strict=True) if batch is None]
    if due:
        started = time.perf_counter()
        losses = _heldout(due)
        seconds = time.perf_counter() - started
        scored = {id(loop) for loop in due}
        for loop in loops:  # nobody trained meanwhile; only those scored count it as evaluation time
            if id(loop) in scored:
                loop.add_eval_seconds(seconds)
            else:
                loop.pause(seconds)
        for loop, loss in zip(due, losses, strict=True):
            started = time.perf_counter()
            loop.observe(loss)  # its own measurements (e.g. validation accuracy) count as its evaluation time
            spent = time.perf_counter() - started
            for other in loops:
                if other is not loop:
                    other.pause(spent)
        return
    batches = [batch for batch in wanted if batch is not None]  # no evaluation was due: every loop has a batch
    results: dict[int, tuple[float, int]] = {}
    for group in _by_entry(loops):
        started = time.perf_counter()
        means, slots = _joint_backward([loops[i] for i in group], [batches[i] for i in group])
        elapsed = time.perf_counter() - started
        total = max(sum(slots), 1)
        for j, loop in enumerate(loops):
            mine = slots[group.index(j)] if j in group else 0
            loop.pause(elapsed * (1 - mine / total))  # the rest of the pass trained the others
        results.update({i: (mean, slot) for i, mean, slot in zip(group, means, slots, strict=True)})
    for j, (index, loop, batch) in enumerate(zip(indices, loops, batches, strict=True)):
        mean, slot = results[j]
        try:
            loop.after_backward(loop.account(mean, batch.real_tokens, slot))
        except TrainingError as exc:  # this candidate alone stops, as its run alone would
            log.warning("sweep candidate %d (%s) failed: %s", index, loop.output, exc)
            failed[index] = exc


def _prompted(loop: TrainingLoop) -> SoftPromptModel:
    """A sweep's loops train prompts (checked when it starts)."""
    assert isinstance(loop.model, SoftPromptModel)
    return loop.model


def _by_entry(loops: list[TrainingLoop]) -> list[list[int]]:
    """Indices of loops whose prompts enter at the same layer: one pass runs one span of layers."""
    groups: dict[int, list[int]] = {}
    for i, loop in enumerate(loops):
        groups.setdefault(_prompted(loop).require_prompt().entry, []).append(i)
    return list(groups.values())


def _joint_backward(loops: list[TrainingLoop], batches: list[Batch]) -> tuple[list[float], list[int]]:
    """Backpropagate every loop's batch in shared passes; each loop's mean token loss and token slots."""
    device = loops[0].model.base.device
    width = max(batch.input_ids.shape[1] for batch in batches)
    pad_id = loops[0].model.base.tokenizer.pad_token_id

    def left_pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=value)

    ids = torch.cat([left_pad(b.input_ids, pad_id) for b in batches]).to(device)
    mask = torch.cat([left_pad(b.attention_mask, 0) for b in batches]).to(device)
    labels = torch.cat([left_pad(b.labels, IGNORE_INDEX) for b in batches]).to(device)
    owners = [k for k, batch in enumerate(batches) for _ in range(batch.input_ids.shape[0])]
    return backward_joint_loss(
        [_prompted(loop) for loop in loops],
        owners,
        ids,
        mask,
        labels,
        scales=[1 / loop.config.grad_accum for loop in loops],
        divisors=[int((batch.labels != IGNORE_INDEX).sum()) for batch in batches],
        max_tokens=sum(loop.config.micro_batch_tokens for loop in loops),  # each candidate brings its budget
    )


def _heldout(loops: list[TrainingLoop]) -> list[float]:
    """Every loop's held-out loss in shared passes (they share the held-out rows and the batch size)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, loop in enumerate(loops):
        by_size.setdefault((loop.config.eval_batch_size, _prompted(loop).require_prompt().entry), []).append(i)
    losses = [0.0] * len(loops)
    for (size, _), members in by_size.items():
        scored = mean_token_losses([_prompted(loops[i]) for i in members], loops[members[0]].eval_set, size)
        for i, loss in zip(members, scored, strict=True):
            losses[i] = loss
    return losses
