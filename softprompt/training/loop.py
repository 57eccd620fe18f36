"""The training loop's state machine: epochs, optimizer steps, evaluation, checkpoints.

Kept apart from ``train.py`` (configs and entry points) so that resuming is just "restore the
state, then run": the loop skips the batches of the current epoch that were already done, and
every other quantity (prompt, AdamW moments, schedule position, counters, metric records) comes
from the checkpoint. Checkpoints are taken only at optimizer-step boundaries, so a resumed run
computes the same floating-point operations as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.core.data import Batch, Example, batches
from softprompt.core.errors import TrainingError
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.model import SoftPromptModel
from softprompt.core.prompt import SoftPrompt
from softprompt.training import distributed, sharding
from softprompt.training.checkpoint import Checkpoint, save_checkpoint
from softprompt.training.heldout import mean_token_loss
from softprompt.training.passes import backward_mean_loss, count_passes, keep_in_step

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters that survive a resume (stored in the checkpoint as JSON)."""

    batch_size: int
    heldout_loss_before: float = math.nan
    best_loss: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    eval_seconds: float = 0.0  # held-out scoring between epochs, kept out of train_seconds


@dataclass
class TrainingLoop:
    model: SoftPromptModel
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
    best_prompt: dict[str, torch.Tensor] | None = None  # the prompt's state at its best held-out loss

    @property
    def sharded(self) -> bool:
        return sharding.is_sharded(self.model.base.model)

    @property
    def prompt(self) -> SoftPrompt:
        return self.model.require_prompt()

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every prompt tensor (the vectors, and the MLP when reparameterised)."""
        return {name: value.detach().clone() for name, value in self.prompt.state_dict().items()}

    @property
    def done(self) -> bool:
        """The step or time budget is spent (``max_steps`` / ``max_seconds``), or early stopping fired."""
        config, progress = self.config, self.progress
        return (
            progress.stopped_early
            or bool(config.max_steps and self.step >= config.max_steps)
            or bool(config.max_seconds and progress.train_seconds >= config.max_seconds)
        )

    def evaluate_before(self) -> None:
        loss = mean_token_loss(self.model, self.eval_set, self.config.eval_batch_size)
        self.progress.heldout_loss_before = self.progress.best_loss = loss
        self.best_prompt = self.prompt_state()
        self._record({"step": 0, "epoch": 0, "eval_loss": loss})
        log.info(
            "held-out loss before training: %.4f (%d rows), batch size %d",
            loss,
            len(self.eval_set),
            self.progress.batch_size,
        )

    def run(self) -> None:
        while (self.config.max_steps or self.epoch <= self.config.epochs) and not self.done:
            self._run_epoch()
            self._end_epoch()

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

    def _run_epoch(self) -> None:
        epoch_batches = self._epoch_batches()
        accum = self.config.grad_accum
        bar = tqdm(
            total=len(epoch_batches),
            initial=self.next_batch,
            desc=f"epoch {self.epoch}/{self.config.epochs}",
            disable=not self.config.progress or not distributed.is_main(),
            leave=False,
        )
        started = time.perf_counter()
        for index in range(self.next_batch, len(epoch_batches)):
            loss = self._backward(epoch_batches[index])
            bar.update(1)
            if (index + 1) % accum == 0 or index + 1 == len(epoch_batches):
                self._optimizer_step()
                self.next_batch = index + 1
                now = time.perf_counter()
                self.progress.train_seconds += now - started
                started = now
                self._record(
                    {
                        "step": self.step,
                        "epoch": self.epoch,
                        "loss": loss,
                        "lr": self.scheduler.get_last_lr()[0],
                        "elapsed": self.progress.train_seconds,
                    }
                )
                bar.set_postfix(loss=f"{loss:.3f}")
                if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.checkpoint()
                if self.done:  # the step or time budget ends the run mid-epoch
                    break
        bar.close()

    def _backward(self, batch: Batch) -> float:
        """Backpropagate this process's rows of a global batch; returns the global mean token loss.

        Dividing the summed loss by the global token count makes the ranks' gradients add up
        to the 1-process gradient exactly (see softprompt.training.distributed).
        """
        local = distributed.shard(batch).to(self.model.base.device)
        rows = local.input_ids.shape[0]  # 0 when a short last batch has fewer rows than ranks
        (tokens,) = distributed.global_sums(int((local.labels != IGNORE_INDEX).sum()))
        mean, count, slots = 0.0, 0, 0
        passes = self._lockstep_passes(local)
        if rows:  # row slices under a token budget bound activation memory; same gradient as one pass
            mean, count, slots = backward_mean_loss(
                self.model,
                local.input_ids,
                local.attention_mask,
                local.labels,
                1 / self.config.grad_accum,
                max_tokens=self.config.micro_batch_tokens,
                divisor=int(tokens),
                passes=passes,
            )
        elif passes:  # no rows here, but the sharded layers all-gather in every pass of the others
            first = Batch(batch.input_ids[:1], batch.attention_mask[:1], batch.labels[:1]).to(self.model.base.device)
            keep_in_step(self.model, first.input_ids, first.attention_mask, first.labels, passes)
        total, real, padded = distributed.global_sums(mean * count, local.real_tokens, slots)
        if not math.isfinite(total):  # the same global value on every rank, so all stop together
            saved = (
                f"the last good checkpoint (step {self.step}) is in {self.output}" if self.step else "nothing was saved"
            )
            raise TrainingError(f"loss became {total} at step {self.step + 1}; lower --lr or check the data; {saved}")
        self.progress.real_tokens += int(real)
        self.progress.padded_tokens += int(padded)  # token slots computed, padding included
        return total / max(tokens, 1)

    def _lockstep_passes(self, local: Batch) -> int:
        """Under --shard fsdp, the passes every process runs for this batch (the most any needs); else 0."""
        if not self.sharded:
            return 0
        mine = (
            count_passes(self.model, local.attention_mask, self.config.micro_batch_tokens)
            if local.input_ids.shape[0]
            else 0
        )
        return distributed.global_max(mine)

    def _optimizer_step(self) -> None:
        params = list(self.prompt.parameters())
        distributed.all_reduce_grads(params)  # identical gradients, hence identical prompts, on every rank
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _end_epoch(self) -> None:
        started = time.perf_counter()
        loss = mean_token_loss(self.model, self.eval_set, self.config.eval_batch_size)
        self.progress.eval_seconds += time.perf_counter() - started
        self._record(
            {"step": self.step, "epoch": self.epoch, "eval_loss": loss, "elapsed": self.progress.train_seconds}
        )
        log.info("epoch %d: held-out loss %.4f", self.epoch, loss)
        if loss < self.progress.best_loss:
            self.progress.best_loss, self.progress.best_epoch, self.progress.stale_epochs = loss, self.epoch, 0
            self.best_prompt = self.prompt_state()
        else:
            self.progress.stale_epochs += 1
            self.progress.stopped_early = (
                bool(self.config.early_stopping) and self.progress.stale_epochs >= self.config.early_stopping
            )
        self.epoch, self.next_batch = self.epoch + 1, 0
        self.checkpoint()

    def _record(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(clean)
        if not distributed.is_main():
            return
        with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")

    def checkpoint(self) -> Path | None:
        """Rank 0 saves; every rank holds the same prompt and optimizer state, so no gather is needed."""
        if not distributed.is_main():
            return None
        prompt = self.prompt_state()
        best = self.best_prompt if self.best_prompt is not None else prompt
        return save_checkpoint(self.output, Checkpoint(
            step=self.step, epoch=self.epoch, next_batch=self.next_batch,
            prompt=prompt, best_prompt=best, optimizer=self.optimizer.state_dict(),
            progress=self.progress.__dict__.copy(), records=self.records, run=self.run_info,
        ))  # fmt: skip

    def restore(self, ckpt: Checkpoint) -> None:
        self.prompt.load_state_dict(ckpt.prompt)
        self.optimizer.load_state_dict(ckpt.optimizer)
        for _ in range(ckpt.step):  # schedules are pure functions of the step count
            self.scheduler.step()
        self.step, self.epoch, self.next_batch = ckpt.step, ckpt.epoch, ckpt.next_batch
        self.progress = Progress(**ckpt.progress)
        self.best_prompt = ckpt.best_prompt
        self.records = list(ckpt.records)
        if not distributed.is_main():
            return
        with open(
            self.output / "metrics.jsonl", "w", encoding="utf-8"
        ) as handle:  # drop lines written after the checkpoint
            handle.writelines(json.dumps(r) + "\n" for r in self.records)
