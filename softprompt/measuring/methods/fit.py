"""The loop for compare's methods that train model weights (prefix tuning, LoRA, full fine-tuning).

Prompt tuning runs ``softprompt train``'s trainer instead (see build.py); this loop follows that
trainer's recipe so the methods differ only in what is trainable: the same batches in the same
order, AdamW without weight decay, the same schedules over the step budget, gradient clipping,
and the same early stopping (validation loss every ``eval_every`` steps and at the end, stop after
``patience`` scores without improvement, keep the best weights).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import get_scheduler

from softprompt.core.data import Batch, Example, batches
from softprompt.core.errors import ConfigError, TrainingError

LossFn = Callable[[Batch], tuple[torch.Tensor, int]]  # batch -> (summed token NLL, token count)


@dataclass(frozen=True)
class FitConfig:
    steps: int = field(default=30, metadata={"help": "optimizer steps (the training budget)"})
    lr: float = field(default=0.03, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=8, metadata={"help": "rows per step"})
    seed: int = field(default=0, metadata={"help": "seed for shuffling"})
    max_seconds: float = field(default=0.0, metadata={"help": "stop early after this much training time (0: no limit)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule, as the trainer's"})
    eval_every: int = field(default=0, metadata={"help": "score the validation rows every N steps (0: only at the end)"})
    patience: int = field(default=0, metadata={"help": "stop after N scores without improvement, keep the best (0: off)"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.eval_every < 0 or self.patience < 0:
            raise ConfigError(f"eval_every and patience must be >= 0, got {self.eval_every} and {self.patience}")
        if not self.lr > 0 or not math.isfinite(self.lr) or self.max_seconds < 0:
            raise ConfigError(f"lr must be positive and max_seconds >= 0, got {self.lr} and {self.max_seconds}")


@dataclass
class FitResult:
    steps: int
    seconds: float
    losses: list[float]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss), step 0 first
    best_step: int = 0
    stopped_early: bool = False


def fit(
    params: Sequence[torch.Tensor], loss_fn: LossFn, examples: list[Example], config: FitConfig, pad_id: int,
    device: torch.device | str = "cpu", validation: list[Example] | None = None,
) -> FitResult:  # fmt: skip
    """AdamW on the schedule for ``config.steps`` steps over shuffled epochs, stopping early on ``validation``."""
    if not examples:
        raise TrainingError("no training rows")
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = get_scheduler(config.scheduler, optimizer, 0, config.steps)
    watch = _Watch(params, loss_fn, validation or [], config, pad_id, device)
    losses: list[float] = []
    started, epoch = time.perf_counter(), 1  # epochs count from 1, as in the trainer (same shuffles)
    while len(losses) < config.steps and not watch.stop:
        epoch_batches = batches(examples, config.batch_size, pad_id, shuffle=True, seed=config.seed + epoch, group_by_length=False)
        for batch in epoch_batches:
            total, count = loss_fn(batch.to(device))
            loss = total / max(count, 1)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at step {len(losses) + 1}; lower the learning rate")
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            out_of_time = bool(config.max_seconds and time.perf_counter() - started > config.max_seconds)
            last = len(losses) >= config.steps or out_of_time
            if last or (config.eval_every and len(losses) % config.eval_every == 0):
                started += watch.score(len(losses))
            if last or watch.stop:
                break
        epoch += 1
    watch.restore_best()
    return FitResult(len(losses), time.perf_counter() - started, losses, watch.curve, watch.best_step, watch.stop)


class _Watch:
    """Validation loss at step 0 and every ``eval_every`` steps; the best weights kept (in memory) for the end."""

    def __init__(self, params: list[torch.Tensor], loss_fn: LossFn, validation: list[Example], config: FitConfig,
                 pad_id: int, device: torch.device | str) -> None:  # fmt: skip
        self.params, self.loss_fn, self.validation, self.config = params, loss_fn, validation, config
        self.pad_id, self.device = pad_id, device
        self.curve: list[tuple[int, float]] = []
        self.best_loss, self.best_step, self.stale, self.stop = math.inf, 0, 0, False
        self.best: list[torch.Tensor] | None = None
        if validation:
            self.score(0)

    def score(self, step: int) -> float:
        """Score the validation rows at ``step``; returns the seconds it took (not training time)."""
        if not self.validation:
            return 0.0
        started = time.perf_counter()
        with torch.no_grad():
            total, count = 0.0, 0
            for batch in batches(self.validation, self.config.batch_size, self.pad_id, group_by_length=False):
                summed, n = self.loss_fn(batch.to(self.device))
                total, count = total + float(summed), count + n
        loss = total / max(count, 1)
        self.curve.append((step, loss))
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.stale = loss, step, 0
            self.best = [p.detach().clone() for p in self.params]
        else:
            self.stale += 1
            self.stop = bool(self.config.patience) and self.stale >= self.config.patience
        return time.perf_counter() - started

    def restore_best(self) -> None:
        if self.config.patience and self.best is not None:
            with torch.no_grad():
                for param, kept in zip(self.params, self.best, strict=True):
                    param.copy_(kept)


def hf_loss(model: torch.nn.Module, accepts_position_ids: bool = True) -> LossFn:
    """Summed target-token NLL of a Hugging Face / PEFT causal LM.

    Targets sit at the end of left-padded rows, so only the logits from the first target's
    predecessor onwards are computed (``logits_to_keep``), never the whole [B, T, vocab].
    """

    def loss(batch: Batch) -> tuple[torch.Tensor, int]:
        labelled = (batch.labels != -100).any(0).nonzero()
        keep = batch.labels.shape[1] - int(labelled[0]) + 1 if len(labelled) else 2
        keep = min(keep, batch.labels.shape[1])
        mask = batch.attention_mask
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if accepts_position_ids else {}
        logits = model(input_ids=batch.input_ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
        targets = batch.labels[:, -keep + 1 :]  # position i predicts token i + 1
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        ), int((targets != -100).sum())

    return loss
