"""Forward/backward passes of one training batch under a memory bound, and multi-process lock step.

The loss is the trained model's (:meth:`softprompt.core.prompted.Tunable.joint_loss`: one model,
or a sweep's candidates sharing the passes); this module only decides how a batch is cut into
passes: rows in slices of at most ``max_tokens`` token slots, each slice trimmed to its own longest
row, each model's summed loss divided by its whole batch's token count, so each gradient equals
one pass over its batch while activation memory is bounded by the slice (about 1.5 MB per token
for SmolLM2-135M in fp32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from softprompt.core.prompted import Tunable, loss_of

# Padded tokens per forward/backward slice in training: bounds activation memory while keeping
# matmuls large enough to run near the machine's peak.
MICRO_BATCH_TOKENS = 512

Cost = Callable[[list[int]], int]  # token slots a pass over rows of these lengths computes


def row_slices(lengths: list[int], max_tokens: int, cost: Cost) -> list[list[int]]:
    """Consecutive rows, longest first, grouped so a slice's token slots stay within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    slices: list[list[int]] = []
    for i in order:
        if slices and cost([lengths[j] for j in [*slices[-1], i]]) <= max_tokens:
            slices[-1].append(i)
        else:
            slices.append([i])
    return slices


def _cost_of(models: Sequence[Tunable]) -> Cost:
    return lambda lengths: models[0].cost(models, lengths)


def backward_loss(
    models: Sequence[Tunable],
    owners: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    scales: list[float],
    divisors: list[int],
    max_tokens: int | None = None,
    passes: int = 0,
) -> tuple[list[float], list[int]]:
    """Backpropagate, per model k, ``scales[k]`` x its rows' summed loss / ``divisors[k]``.

    ``owners[row]`` indexes ``models`` (one model: every row is its own). Rows of every model
    share the passes (slices of at most ``max_tokens`` token slots), and each model's gradient is
    that of its rows alone. ``divisors`` are the models' token counts (multi-process training
    divides by the global count). Returns each model's summed loss / ``divisors[k]`` (non-finite
    once any of its slices was, and from then on it takes no more gradient) and the token slots
    its rows took. ``passes`` pads the work to that many forward/backward passes (see
    :func:`keep_in_step`); then every slice runs and backpropagates even after a non-finite loss,
    so no process leaves the others waiting (the caller sees the non-finite mean).
    """
    lengths = attention_mask.sum(dim=1).tolist()
    cost = _cost_of(models)
    slices = row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, cost)
    totals, slot_counts = [0.0] * len(models), [0] * len(models)
    for rows in slices:
        if not passes and not any(math.isfinite(total) for total in totals):
            break  # every model's run stops here
        width = max(lengths[i] for i in rows)
        index = torch.tensor(rows, device=input_ids.device)
        mine = [owners[i] for i in rows]
        losses = models[0].joint_loss(
            models, mine, input_ids[index, -width:], attention_mask[index, -width:], labels[index, -width:]
        )
        objective = None
        for k, result in enumerate(losses):
            if result is None:
                continue
            loss = result[0]
            slot_counts[k] += cost([lengths[i] for i in rows if owners[i] == k])
            if not torch.isfinite(loss) or not math.isfinite(totals[k]):
                totals[k] = math.nan  # that run alone would stop here; the others go on
                if not passes:
                    continue
            totals[k] += float(loss.detach())
            term = loss * (scales[k] / max(divisors[k], 1))
            objective = term if objective is None else objective + term
        if objective is not None:
            objective.backward()
    keep_in_step(models[0], input_ids, attention_mask, labels, passes - len(slices))
    return [total / max(divisor, 1) for total, divisor in zip(totals, divisors, strict=True)], slot_counts


def count_passes(models: Sequence[Tunable], attention_mask: torch.Tensor, max_tokens: int | None = None) -> int:
    """Forward/backward passes :func:`backward_loss` runs for these rows (0 for none)."""
    lengths = attention_mask.sum(dim=1).tolist()
    return len(row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, _cost_of(models))) if lengths else 0


def keep_in_step(
    model: Tunable, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, passes: int
) -> None:
    """Run ``passes`` zero-weighted passes over the shortest row (backward too while grads are on).

    Under ``--shard fsdp`` each decoder layer all-gathers its weights in every forward and
    backward, so a process with fewer rows than the others, or none, must still take part
    in as many passes or the others wait forever. The loss is multiplied by zero, so the
    trained tensors gain exact zeros and the result is that of the unpadded work.
    """
    if passes <= 0:
        return
    lengths = attention_mask.sum(dim=1)
    row = int(lengths.argmin())
    width = int(lengths[row])
    ids, mask, target = (t[row : row + 1, -width:] for t in (input_ids, attention_mask, labels))
    for _ in range(passes):
        loss, _ = loss_of(model, ids, mask, target)
        if torch.is_grad_enabled():
            (loss * 0.0).backward()
