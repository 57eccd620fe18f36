"""The training loop's state machine: epochs, optimizer steps, evaluation, checkpoints.

Kept apart from ``train.py`` (configs and entry points) so that resuming is just "restore the
state, then run": the loop skips the batches of the current epoch that were already done, and
every other quantity (the trained state, AdamW moments, schedule position, counters, metric records) comes
from the checkpoint. Checkpoints are taken only at optimizer-step boundaries, so a resumed run
computes the same floating-point operations as an uninterrupted one.

The loop is a set of steps, not a driver: :meth:`TrainingLoop.take_batch` -> (the driver
backpropagates it) -> :meth:`TrainingLoop.after_backward`, and :meth:`TrainingLoop.observe` whenever
``take_batch`` says an evaluation is due. :mod:`softprompt.training.driver` drives one loop, or a
sweep's loops through shared passes, with the same steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from softprompt.core import run_files
from softprompt.core.data import Batch, Example, batches
from softprompt.core.errors import TrainingError
from softprompt.core.prompted import Tunable
from softprompt.training import distributed
from softprompt.training.checkpoint import Checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters that survive a resume (stored in the checkpoint as JSON)."""

    batch_size: int
    heldout_loss_before: float = math.nan
    best_loss: float = math.inf
    best_step: int = 0
    stale_epochs: int = 0  # evaluations without improvement (one per epoch unless eval_every is set)
    evaluated_step: int = 0  # the optimizer step of the last held-out evaluation
    evaluated_seconds: float = 0.0  # training seconds at the last held-out evaluation
    real_tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    eval_seconds: float = 0.0  # held-out scoring between epochs, kept out of train_seconds


@dataclass
class TrainingLoop:
    model: Tunable
    train_set: list[Example]
    eval_set: list[Example]
    config: Any  # TrainConfig (imported lazily by train.py to avoid a cycle)
    output: Path
    optimizer: torch.optim.Optimizer
    scheduler: Any
    progress: Progress
    run_info: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    epoch: int = 1
    next_batch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # the trained state at its best held-out loss
    # More numbers per held-out evaluation (e.g. compare's validation accuracy), recorded beside the
    # loss; their time counts as evaluation, not training.
    measure: Callable[[TrainingLoop], dict[str, float]] | None = None
    # the open epoch (None between epochs): its batches, the next one to backpropagate, its bar
    _batches: list[Batch] | None = field(default=None, repr=False)
    _cursor: int = 0
    _bar: Any = None
    _started: float = 0.0  # when training time last started counting
    _eval_due: bool = False

    @property
    def trained(self) -> nn.Module:
        """What the optimizer updates: the prompt (its vectors or keys/values, and the MLP when
        reparameterised), or a model's trainable weights."""
        return self.model.trained

    def trained_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every trained tensor."""
        return {name: value.detach().clone() for name, value in self.trained.state_dict().items()}

    @property
    def done(self) -> bool:
        """The step or time budget is spent (``max_steps`` / ``max_seconds``), or early stopping fired."""
        config, progress = self.config, self.progress
        return (
            progress.stopped_early
            or bool(config.max_steps and self.step >= config.max_steps)
            or bool(config.max_seconds and progress.train_seconds >= config.max_seconds)
        )

    def evaluate_before(self, loss: float) -> None:
        """Take the initial state's held-out loss (scored by the driver, in passes shared with other runs)."""
        self.progress.heldout_loss_before = self.progress.best_loss = loss
        self.best_state = self.trained_state()
        self._record({"step": 0, "epoch": 0, "eval_loss": loss, "elapsed": 0.0, **self._measured()})
        log.info(
            "held-out loss before training: %.4f (%d rows), batch size %d",
            loss,
            len(self.eval_set),
            self.progress.batch_size,
        )

    @property
    def training(self) -> bool:
        """Batches or an evaluation remain (an open epoch always ends in one of the two)."""
        return self._batches is not None or self._more_epochs()

    def _more_epochs(self) -> bool:
        return self._epoch_limit(self.epoch) and not self.done

    def _epoch_limit(self, epoch: int) -> bool:
        """Epoch ``epoch`` may run: a step budget or no epoch limit (0) lets epochs go on."""
        config = self.config
        return bool(config.max_steps or not config.epochs or epoch <= config.epochs)

    def take_batch(self) -> Batch | None:
        """This epoch's next batch, or None when an evaluation is due (call :meth:`observe`). Idempotent."""
        while True:
            if self._batches is None:
                if not self._more_epochs():
                    return None
                self._open_epoch()
            assert self._batches is not None
            if self._eval_due:
                return None
            if self._cursor < len(self._batches) and not self.done:
                return self._batches[self._cursor]
            # The epoch is over, or the budget ran out in it: evaluate per epoch, or once at the end
            # when evaluating every N steps (unless this step was just evaluated).
            last = self.done or not self._epoch_limit(self.epoch + 1)
            if not self.periodic or (last and self.progress.evaluated_step != self.step):
                self._eval_due = True
                return None
            self._close_epoch()

    def _open_epoch(self) -> None:
        self._batches = self._epoch_batches()
        self._cursor = self.next_batch
        self._bar = tqdm(
            total=len(self._batches),
            initial=self.next_batch,
            desc=f"epoch {self.epoch}/{self.config.epochs or '-'}",
            disable=not self.config.progress or not distributed.is_main(),
            leave=False,
        )
        self._started = time.perf_counter()

    def _close_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._batches, self._bar = None, None
        self.epoch, self.next_batch = self.epoch + 1, 0
        self.checkpoint()

    def _epoch_batches(self) -> list[Batch]:
        pad_id = self.model.base.tokenizer.pad_token_id
        seed = self.config.seed + self.epoch
        return list(
            batches(
                self.train_set,
                self.progress.batch_size,
                pad_id,
                shuffle=True,
                seed=seed,
                group_by_length=self.config.group_by_length,
            )
        )

    def after_backward(self, loss: float) -> None:
        """The batch from :meth:`take_batch` was backpropagated (mean token loss ``loss``): step if a window closed."""
        assert self._batches is not None
        index, count = self._cursor, len(self._batches)
        self._cursor += 1
        if self._bar is not None:
            self._bar.update(1)
        if (index + 1) % self.config.grad_accum and index + 1 != count:
            return
        self._optimizer_step()
        self.next_batch = index + 1
        now = time.perf_counter()
        self.progress.train_seconds += now - self._started
        self._started = now
        lr = self.scheduler.get_last_lr()[0]
        self._record(
            {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "elapsed": self.progress.train_seconds}
        )
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}")
        if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
            self.checkpoint()
        self._eval_due = self._eval_due or self._evaluation_due()

    def add_eval_seconds(self, seconds: float) -> None:
        self.progress.eval_seconds += seconds
        self.pause(seconds)

    def pause(self, seconds: float) -> None:
        """``seconds`` just spent not training (an evaluation) do not count as training time."""
        self._started += seconds

    def observe(self, loss: float) -> None:
        """Take the held-out loss due (see :meth:`take_batch`): keep the best state, stop early, end the epoch."""
        record = {"step": self.step, "epoch": self.epoch, "eval_loss": loss, "elapsed": self.progress.train_seconds}
        self._record({**record, **self._measured()})
        log.info("epoch %d, step %d: held-out loss %.4f", self.epoch, self.step, loss)
        progress = self.progress
        if loss < progress.best_loss:
            progress.best_loss, progress.best_step = loss, self.step
            progress.stale_epochs = 0
            self.best_state = self.trained_state()
        else:
            progress.stale_epochs += 1
            progress.stopped_early = (
                bool(self.config.early_stopping) and progress.stale_epochs >= self.config.early_stopping
            )
        progress.evaluated_step, progress.evaluated_seconds, self._eval_due = self.step, progress.train_seconds, False
        batches = self._batches
        if batches is None or self._cursor >= len(batches) or self.done or not self.periodic:
            self._close_epoch()
        else:
            self.checkpoint()

    @property
    def periodic(self) -> bool:
        """Evaluations come every N steps or seconds, not at the end of each epoch."""
        return bool(self.config.eval_every or self.config.eval_every_seconds)

    def _evaluation_due(self) -> bool:
        config, progress = self.config, self.progress
        by_steps = bool(config.eval_every and self.step % config.eval_every == 0)
        every = config.eval_every_seconds
        return by_steps or bool(every and progress.train_seconds - progress.evaluated_seconds >= every)

    def _measured(self) -> dict[str, float]:
        if self.measure is None:
            return {}
        started = time.perf_counter()
        found = self.measure(self)
        self.add_eval_seconds(time.perf_counter() - started)
        return found

    def account(self, loss: float, real: int, padded: int) -> float:
        """Count a backpropagated batch's tokens; a non-finite loss ends the run (on every rank alike)."""
        if not math.isfinite(loss):
            saved = (
                f"the last good checkpoint (step {self.step}) is in {self.output}" if self.step else "nothing was saved"
            )
            raise TrainingError(f"loss became {loss} at step {self.step + 1}; lower --lr or check the data; {saved}")
        self.progress.real_tokens += real
        self.progress.padded_tokens += padded  # token slots computed, padding included
        return loss

    def _optimizer_step(self) -> None:
        params = list(self.trained.parameters())
        distributed.all_reduce_grads(params)  # identical gradients, hence identical trained states, on every rank
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _record(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(clean)
        if not distributed.is_main():
            return
        with open(self.output / run_files.RECORDS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")

    def checkpoint(self) -> Path | None:
        """Rank 0 saves; every rank holds the same trained and optimizer state, so no gather is needed."""
        if not distributed.is_main() or not self.config.checkpoints:
            return None
        prompt = self.trained_state()
        best = self.best_state if self.best_state is not None else prompt
        return save_checkpoint(
            self.output,
            Checkpoint(
                step=self.step,
                epoch=self.epoch,
                next_batch=self.next_batch,
                prompt=prompt,
                best_prompt=best,
                optimizer=self.optimizer.state_dict(),
                progress=self.progress.__dict__.copy(),
                records=self.records,
                run=self.run_info,
            ),
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.trained.load_state_dict(ckpt.prompt)
        self.optimizer.load_state_dict(ckpt.optimizer)
        for _ in range(ckpt.step):  # schedules are pure functions of the step count
            self.scheduler.step()
        self.step, self.epoch, self.next_batch = ckpt.step, ckpt.epoch, ckpt.next_batch
        known = Progress.__dataclass_fields__  # a checkpoint from before a counter was dropped still resumes
        self.progress = Progress(**{k: v for k, v in ckpt.progress.items() if k in known})
        self.best_state = ckpt.best_prompt
        self.records = list(ckpt.records)
        # a checkpoint taken at an evaluation step, before that evaluation
        self._eval_due = bool(self.step and self.progress.evaluated_step < self.step and self._evaluation_due())
        if not distributed.is_main():
            return
        with open(
            self.output / run_files.RECORDS, "w", encoding="utf-8"
        ) as handle:  # drop lines written after the checkpoint
            handle.writelines(json.dumps(r) + "\n" for r in self.records)
