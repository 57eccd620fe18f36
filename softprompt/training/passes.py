"""Forward/backward passes of one training batch under a memory bound, and multi-process lock step.

The loss and its layouts are the prompt core's (:meth:`SoftPromptModel.loss`); this module only
decides how a batch is cut into passes: rows in slices of at most ``max_tokens`` token slots,
each slice trimmed to its own longest row, each slice's summed loss divided by the whole batch's
token count, so the gradient equals one pass over the batch while activation memory is bounded
by the slice (about 1.5 MB per token for SmolLM2-135M in fp32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from softprompt.core.forms import Form
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.layouts import choose_layout
from softprompt.core.prompted import SoftPromptModel, Tunable, joint_loss

# Padded tokens per forward/backward slice in training: bounds activation memory while keeping
# matmuls large enough to run near the machine's peak.
MICRO_BATCH_TOKENS = 512


def slots(lengths: list[int], rows: list[int], packed: bool) -> int:
    """Token slots a slice of these rows computes: rows x longest row when padded, their sum when packed."""
    return sum(lengths[i] for i in rows) if packed else len(rows) * max(lengths[i] for i in rows)


def row_slices(lengths: list[int], max_tokens: int, packed: bool = False) -> list[list[int]]:
    """Consecutive rows, longest first, grouped so a slice's token slots stay within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    slices: list[list[int]] = []
    for i in order:
        if slices and slots(lengths, [*slices[-1], i], packed) <= max_tokens:
            slices[-1].append(i)
        else:
            slices.append([i])
    return slices


def _packed(model: Tunable, lengths: list[int]) -> bool:
    return model.layout_for(max(lengths)) == "packed"


def backward_mean_loss(
    model: Tunable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 1.0,
    max_tokens: int | None = None,
    divisor: int | None = None,
    passes: int = 0,
) -> tuple[float, int, int]:
    """Backpropagate ``scale`` x the batch's mean token loss; returns it, the token count and the slots run.

    ``divisor`` replaces the batch's own token count (multi-process training divides by the
    global count). ``passes`` pads the work to that many forward/backward passes (see
    :func:`keep_in_step`) and then every slice runs even after a non-finite loss, so no process
    leaves the others waiting; the caller sees the non-finite mean.
    """
    count = int((labels != IGNORE_INDEX).sum())  # every labelled token is scored after a prompt
    lengths = attention_mask.sum(dim=1).tolist()
    packed = _packed(model, lengths)
    slices = row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, packed)
    total, computed = 0.0, 0
    for rows in slices:
        width = max(lengths[i] for i in rows)
        index = torch.tensor(rows, device=input_ids.device)
        loss, _ = model.loss(input_ids[index, -width:], attention_mask[index, -width:], labels[index, -width:])
        if not torch.isfinite(loss) and not passes:
            return float(loss), count, computed
        (loss * (scale / max(divisor or count, 1))).backward()
        total += float(loss.detach())
        computed += slots(lengths, rows, packed)
    keep_in_step(model, input_ids, attention_mask, labels, passes - len(slices))
    return total / max(count, 1), count, computed


def count_passes(model: Tunable, attention_mask: torch.Tensor, max_tokens: int | None = None) -> int:
    """Forward/backward passes :func:`backward_mean_loss` runs for these rows (0 for none)."""
    lengths = attention_mask.sum(dim=1).tolist()
    return len(row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, _packed(model, lengths)))


def keep_in_step(
    model: Tunable, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, passes: int
) -> None:
    """Run ``passes`` zero-weighted passes over the shortest row (backward too while grads are on).

    Under ``--shard fsdp`` each decoder layer all-gathers its weights in every forward and
    backward, so a process with fewer rows than the others, or none, must still take part
    in as many passes or the others wait forever. The loss is multiplied by zero, so the
    prompt's gradient gains exact zeros and the result is that of the unpadded work.
    """
    if passes <= 0:
        return
    lengths = attention_mask.sum(dim=1)
    row = int(lengths.argmin())
    width = int(lengths[row])
    ids, mask, target = (t[row : row + 1, -width:] for t in (input_ids, attention_mask, labels))
    for _ in range(passes):
        loss, _ = model.loss(ids, mask, target)
        if torch.is_grad_enabled():
            (loss * 0.0).backward()


def backward_joint_loss(
    models: Sequence[SoftPromptModel],
    owners: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    scales: list[float],
    divisors: list[int],
    max_tokens: int,
) -> tuple[list[float], list[int]]:
    """A sweep's passes: backpropagate, per model k, ``scales[k]`` x its rows' summed loss / ``divisors[k]``.

    ``owners[row]`` indexes ``models``. Rows of every model share the passes (slices of at most
    ``max_tokens`` token slots, as :func:`backward_mean_loss`), and each model's gradient is that
    of its rows alone. Returns each model's mean token loss (its summed loss / ``divisors[k]``;
    non-finite once any of its slices was, and from then on that model takes no more gradient)
    and the token slots its rows took in the passes.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    prompts = [model.require_prompt() for model in models]
    longest = max(prompt.num_virtual_tokens for prompt in prompts)
    form = Form.KV if any(prompt.form is Form.KV for prompt in prompts) else Form.VECTORS
    packed = (models[0].layout or choose_layout(models[0].base, longest, max(lengths), form)) == "packed"
    totals, slot_counts = [0.0] * len(models), [0] * len(models)
    for rows in row_slices(lengths, max_tokens, packed):
        width = max(lengths[i] for i in rows)
        index = torch.tensor(rows, device=input_ids.device)
        mine = [owners[i] for i in rows]
        losses = joint_loss(
            models, mine, input_ids[index, -width:], attention_mask[index, -width:], labels[index, -width:]
        )
        objective = None
        for k, result in enumerate(losses):
            if result is None:
                continue
            loss = result[0]
            slot_counts[k] += slots(lengths, [i for i in rows if owners[i] == k], packed)
            if not torch.isfinite(loss) or not math.isfinite(totals[k]):
                totals[k] = math.nan  # that run alone would stop here; the others go on
                continue
            totals[k] += float(loss.detach())
            term = loss * (scales[k] / max(divisors[k], 1))
            objective = term if objective is None else objective + term
        if objective is not None:
            objective.backward()
    return [total / max(divisor, 1) for total, divisor in zip(totals, divisors, strict=True)], slot_counts
