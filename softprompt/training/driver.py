"""Driving training loops to their end: one run, or a sweep's candidates in shared passes.

A run alone is a sweep of one. At every turn each running loop hands over its next batch, the
batches go through the model together (:func:`softprompt.training.passes.backward_loss`), every
row attending to its own candidate's prompt, each candidate's loss divided by its own token count,
and each loop then takes its own step; held-out evaluations that fall due together are shared
passes too. Loops share a pass where their models say they can (``pass_key``: prompts over one
base entering at the same layer); the rest take turns. A loop whose loss becomes non-finite fails
alone. Ctrl-C checkpoints every loop; each resumes alone with ``softprompt train --resume``.

Under torchrun (one loop only) each process backpropagates its share of every batch, divided by
the global token count, so the gradients add up to the one-process gradient exactly
(:mod:`softprompt.training.distributed`); under ``--shard fsdp`` every process runs as many
passes as the busiest one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

import torch

from softprompt.core.data import Batch
from softprompt.core.errors import TrainingError, TrainingInterrupted
from softprompt.core.inject import IGNORE_INDEX
from softprompt.training import distributed, sharding
from softprompt.training.heldout import mean_token_losses
from softprompt.training.loop import TrainingLoop
from softprompt.training.passes import backward_loss, count_passes, keep_in_step

log = logging.getLogger(__name__)


def drive(loops: list[TrainingLoop]) -> dict[int, TrainingError]:
    """Run every loop to its end; the errors that ended some of them, by index (the others went on)."""
    failed: dict[int, TrainingError] = {}
    try:
        while running := [i for i, loop in enumerate(loops) if loop.training and i not in failed]:
            _turn([loops[i] for i in running], running, failed)
    except KeyboardInterrupt:
        for i, loop in enumerate(loops):
            if i not in failed:
                loop.checkpoint()
        raise TrainingInterrupted(_interrupted(loops)) from None
    return failed


def _interrupted(loops: list[TrainingLoop]) -> str:
    if len(loops) == 1:
        loop = loops[0]
        return f"interrupted after step {loop.step}; checkpoint saved, continue with: softprompt train --resume {loop.output}"
    outputs = ", ".join(str(loop.output) for loop in loops)
    return (
        f"sweep interrupted; each candidate saved a checkpoint ({outputs}): "
        "continue any of them alone with softprompt train --resume DIR"
    )


def heldout(loops: list[TrainingLoop]) -> list[float]:
    """Every loop's held-out loss, in passes shared by those that can share them (same rows and batch size)."""
    groups: dict[tuple[int, int, Hashable], list[int]] = {}
    for i, loop in enumerate(loops):
        key = (id(loop.eval_set), loop.config.eval_batch_size, loop.model.pass_key())
        groups.setdefault(key, []).append(i)
    losses = [0.0] * len(loops)
    for (_, size, _), members in groups.items():
        scored = mean_token_losses([loops[i].model for i in members], loops[members[0]].eval_set, size)
        for i, loss in zip(members, scored, strict=True):
            losses[i] = loss
    return losses


def _turn(loops: list[TrainingLoop], indices: list[int], failed: dict[int, TrainingError]) -> None:
    """One turn: the evaluations that are due (together), else one batch of every running loop (together).

    Each loop is charged, as training time, its share of a shared pass (its rows' token slots over
    all of them), so a time budget is machine time per candidate whether candidates train alone or
    together.
    """
    wanted = [loop.take_batch() for loop in loops]
    due = [loop for loop, batch in zip(loops, wanted, strict=True) if batch is None]
    if due:
        _evaluate(loops, due)
        return
    batches = [batch for batch in wanted if batch is not None]  # no evaluation was due: every loop has a batch
    results: dict[int, tuple[float, int, int]] = {}
    for group in _groups(loops):
        if len(loops) == 1:  # a run alone: all of its passes are its own
            results[0] = _backward(loops, batches)[0]
            continue
        started = time.perf_counter()
        done = _backward([loops[i] for i in group], [batches[i] for i in group])
        elapsed = time.perf_counter() - started
        total = max(sum(slots for _, _, slots in done), 1)
        for j, loop in enumerate(loops):
            mine = done[group.index(j)][2] if j in group else 0
            loop.pause(elapsed * (1 - mine / total))  # the rest of the pass trained the others
        results.update(zip(group, done, strict=True))
    for j, (index, loop) in enumerate(zip(indices, loops, strict=True)):
        try:
            loop.after_backward(loop.account(*results[j]))
        except TrainingError as exc:  # this candidate alone stops, as its run alone would
            if len(loops) > 1:
                log.warning("sweep candidate %d (%s) failed: %s", index, loop.output, exc)
            failed[index] = exc


def _evaluate(loops: list[TrainingLoop], due: list[TrainingLoop]) -> None:
    """Score the loops whose evaluation is due; nobody trains meanwhile, only those scored count it as evaluation."""
    started = time.perf_counter()
    losses = heldout(due)
    seconds = time.perf_counter() - started
    scored = {id(loop) for loop in due}
    for loop in loops:
        if id(loop) in scored:
            loop.add_eval_seconds(seconds)
        else:
            loop.pause(seconds)
    if len(loops) == 1:  # a run alone: nobody else to charge
        loops[0].observe(losses[0])
        return
    for loop, loss in zip(due, losses, strict=True):
        started = time.perf_counter()
        loop.observe(loss)  # its own measurements (e.g. validation accuracy) count as its evaluation time
        spent = time.perf_counter() - started
        for other in loops:
            if other is not loop:
                other.pause(spent)


def _groups(loops: list[TrainingLoop]) -> list[list[int]]:
    """Indices of loops whose models can share a pass."""
    groups: dict[Hashable, list[int]] = {}
    for i, loop in enumerate(loops):
        groups.setdefault(loop.model.pass_key(), []).append(i)
    return list(groups.values())


def _backward(loops: list[TrainingLoop], batches: list[Batch]) -> list[tuple[float, int, int]]:
    """Backpropagate every loop's batch (this process's rows of it) in shared passes.

    Per loop: the global mean token loss, real tokens and token slots, summed over processes.
    """
    models = [loop.model for loop in loops]
    device = models[0].base.device
    local = [distributed.shard(batch) for batch in batches]  # each process's rows; all of them in one process
    tokens = distributed.global_sums(*[int((b.labels != IGNORE_INDEX).sum()) for b in local])
    ids, mask, labels = _side_by_side(local, models[0].base.tokenizer.pad_token_id, device)
    owners = [k for k, batch in enumerate(local) for _ in range(batch.input_ids.shape[0])]
    max_tokens = sum(loop.config.micro_batch_tokens for loop in loops)  # each candidate brings its budget
    passes = _lockstep_passes(loops, mask, max_tokens)
    means, slots = [0.0] * len(loops), [0] * len(loops)
    if owners:  # row slices under a token budget bound activation memory; same gradient as one pass
        means, slots = backward_loss(
            models,
            owners,
            ids,
            mask,
            labels,
            scales=[1 / loop.config.grad_accum for loop in loops],
            divisors=[int(n) for n in tokens],
            max_tokens=max_tokens,
            passes=passes,
        )
    elif passes:  # no rows here, but the sharded layers all-gather in every pass of the others
        first = Batch(*(t[:1] for t in (batches[0].input_ids, batches[0].attention_mask, batches[0].labels)))
        first = first.to(device)
        keep_in_step(models[0], first.input_ids, first.attention_mask, first.labels, passes)
    n = len(loops)
    sums = distributed.global_sums(*means, *[b.real_tokens for b in local], *slots)
    return [(sums[k], int(sums[n + k]), int(sums[2 * n + k])) for k in range(n)]


def _side_by_side(batches: list[Batch], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The batches' rows as one left-padded batch."""
    if len(batches) == 1:
        only = batches[0].to(device)
        return only.input_ids, only.attention_mask, only.labels
    width = max(batch.input_ids.shape[1] for batch in batches)

    def left_pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=value)

    ids = torch.cat([left_pad(b.input_ids, pad_id) for b in batches]).to(device)
    mask = torch.cat([left_pad(b.attention_mask, 0) for b in batches]).to(device)
    labels = torch.cat([left_pad(b.labels, IGNORE_INDEX) for b in batches]).to(device)
    return ids, mask, labels


def _lockstep_passes(loops: list[TrainingLoop], mask: torch.Tensor, max_tokens: int) -> int:
    """Under --shard fsdp (one loop), the passes every process runs for this batch (the most any needs); else 0."""
    if not sharding.is_sharded(loops[0].model.base.model):
        return 0
    return distributed.global_max(count_passes([loop.model for loop in loops], mask, max_tokens))
