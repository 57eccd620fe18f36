"""Training loop for the soft prompt only; the base model is frozen and never changes.

One run writes into its output directory: the adapter (PEFT format), ``metrics.jsonl`` (a
line per optimizer step and per evaluation), ``metrics.json`` (the summary) and
``loss_curve.png``. The output directory is checked for writability before any compute.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from softprompt.adapter import atomic_path, write_json
from softprompt.data import Batch, DataConfig, Example, batches, label_words, load_examples
from softprompt.errors import ConfigError, TrainingError
from softprompt.evaluate import mean_token_loss
from softprompt.model import SoftPromptModel
from softprompt.models import load_base_model
from softprompt.plots import save_loss_curve
from softprompt.prompt import Init, PromptConfig

log = logging.getLogger(__name__)

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass(frozen=True)
class TrainConfig:
    output: str = field(default="softprompt-out", metadata={"help": "directory for the adapter, metrics and plot"})
    lr: float = field(default=0.03, metadata={"help": "AdamW learning rate for the prompt"})
    epochs: int = field(default=5, metadata={"help": "passes over the training rows"})
    batch_size: int = field(default=0, metadata={"help": "rows per batch; 0 picks one that fits memory"})
    grad_accum: int = field(default=1, metadata={"help": "batches per optimizer step"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and dropout: same seed, same prompt"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule: " + ", ".join(SCHEDULERS)})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps spent warming up the learning rate"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per batch when scoring held-out data"})
    early_stopping: int = field(
        default=0, metadata={"help": "stop after N epochs without held-out improvement and keep the best (0: off)"}
    )
    group_by_length: bool = field(default=True, metadata={"help": "batch rows of similar length to cut padding"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 1 or self.grad_accum < 1 or self.batch_size < 0 or self.eval_batch_size < 1:
            raise ConfigError("epochs, grad_accum and eval_batch_size must be >= 1 and batch_size >= 0")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not 0 <= self.warmup_ratio < 1 or self.early_stopping < 0:
            raise ConfigError("warmup_ratio must be in [0, 1) and early_stopping >= 0")


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]


def auto_batch_size(model: SoftPromptModel, examples: list[Example], budget_bytes: int | None = None) -> int:
    """Largest power of two (<= 32) whose estimated activation memory fits the budget.

    Backpropagating to the prompt keeps roughly 16 floats per hidden unit per layer per token
    (attention and MLP inputs, norms, residuals); the budget is a quarter of free RAM (capped at
    1 GiB on CPU, where bigger batches stop paying) or half of free GPU memory.
    """
    config = model.base.model.config
    layers = getattr(config, "num_hidden_layers", 12)
    width = max(model.base.hidden_size, getattr(config, "intermediate_size", 0) // 2)
    bytes_per_token = 16 * layers * width * model.base.model.dtype.itemsize
    if budget_bytes is None:
        if model.base.device.type == "cuda":
            budget_bytes = torch.cuda.mem_get_info(model.base.device)[0] // 2
        else:
            budget_bytes = min(psutil.virtual_memory().available // 4, 1 << 30)
    longest = max(len(e.input_ids) for e in examples) + model.require_prompt().num_virtual_tokens
    size = 32
    while size > 1 and size * longest * bytes_per_token > budget_bytes:
        size //= 2
    return size


def prepare_output(output: Path) -> None:
    """Fail before training, not after it, when results could not be saved."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(output / ".write-test") as probe:
            probe.write_bytes(b"ok")
        (output / ".write-test").unlink()
    except OSError as exc:
        raise TrainingError(f"cannot write to output directory {output}: {exc.strerror or exc}") from exc


def train(
    model: SoftPromptModel, train_set: list[Example], eval_set: list[Example], config: TrainConfig
) -> TrainResult:
    prompt = model.require_prompt()
    output = Path(config.output)
    prepare_output(output)
    torch.manual_seed(config.seed)
    batch_size = config.batch_size or auto_batch_size(model, train_set)
    pad_id = model.base.tokenizer.pad_token_id
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / batch_size) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler, optimizer, int(config.warmup_ratio * total_steps), total_steps)
    records: list[dict[str, Any]] = []
    before = mean_token_loss(model, eval_set, config.eval_batch_size)
    records.append({"step": 0, "epoch": 0, "eval_loss": before})
    log.info("held-out loss before training: %.4f (%d rows), batch size %d", before, len(eval_set), batch_size)

    state = _LoopState(best_loss=before, best_prompt=prompt.embedding.detach().clone())
    started = time.perf_counter()
    with open(output / "metrics.jsonl", "w", encoding="utf-8") as log_file:
        _log_record(log_file, records[0])
        for epoch in range(1, config.epochs + 1):
            epoch_batches = list(
                batches(
                    train_set,
                    batch_size,
                    pad_id,
                    shuffle=True,
                    seed=config.seed + epoch,
                    group_by_length=config.group_by_length,
                )
            )
            bar = tqdm(epoch_batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
            for index, batch in enumerate(bar):
                loss = _backward(model, batch.to(model.base.device), config.grad_accum, state)
                if (index + 1) % config.grad_accum == 0 or index + 1 == len(epoch_batches):
                    _step(prompt.parameters(), optimizer, scheduler, config.max_grad_norm)
                    state.step += 1
                    record = {
                        "step": state.step,
                        "epoch": epoch,
                        "loss": loss,
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed": time.perf_counter() - started,
                    }
                    records.append(record)
                    _log_record(log_file, record)
                    bar.set_postfix(loss=f"{loss:.3f}")
            eval_started = time.perf_counter()
            eval_loss = mean_token_loss(model, eval_set, config.eval_batch_size)
            state.eval_seconds += time.perf_counter() - eval_started
            elapsed = time.perf_counter() - started
            records.append({"step": state.step, "epoch": epoch, "eval_loss": eval_loss, "elapsed": elapsed})
            _log_record(log_file, records[-1])
            log.info("epoch %d: held-out loss %.4f", epoch, eval_loss)
            if _stop_early(state, epoch, eval_loss, prompt.embedding, config):
                break
    # Throughput counts training only; held-out scoring between epochs is reported apart.
    train_seconds = time.perf_counter() - started - state.eval_seconds
    if config.early_stopping and state.best_epoch:
        with torch.no_grad():
            prompt.embedding.copy_(state.best_prompt)
    after = mean_token_loss(model, eval_set, config.eval_batch_size)
    metrics = {
        "base_model": model.base.name,
        "num_virtual_tokens": prompt.num_virtual_tokens,
        "init": model.prompt_config.init.value if model.prompt_config else None,
        "heldout_loss_before": before,
        "heldout_loss_after": after,
        "train_seconds": train_seconds,
        "eval_seconds": state.eval_seconds,
        "train_tokens_per_second": state.real_tokens / train_seconds,
        "train_padded_tokens_per_second": state.padded_tokens / train_seconds,
        "train_rows": len(train_set),
        "eval_rows": len(eval_set),
        "epochs_run": records[-1]["epoch"],
        "optimizer_steps": state.step,
        "batch_size": batch_size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": asdict(config),
    }
    model.save_pretrained(output, metrics={k: v for k, v in metrics.items() if k != "config"})
    write_json(output / "metrics.json", metrics)
    save_loss_curve(
        records, output / "loss_curve.png", title=f"{model.base.name}: {prompt.num_virtual_tokens} virtual tokens"
    )
    return TrainResult(output=output, metrics=metrics)


def tune(
    model: str,
    data: DataConfig,
    prompt: PromptConfig,
    training: TrainConfig,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> TrainResult:
    """Load a base model and data, initialise a prompt and train it: ``softprompt train`` in Python."""
    prepare_output(Path(training.output))
    base = load_base_model(model, trust_remote_code=trust_remote_code, device=device)
    train_set, held_out = load_examples(data, base.tokenizer)
    if prompt.init is Init.LABELS and not prompt.init_labels:
        prompt = replace(prompt, init_labels=label_words(data))
    tuned = SoftPromptModel.with_new_prompt(base, prompt, seed=training.seed)
    return train(tuned, train_set, held_out, training)


@dataclass
class _LoopState:
    best_loss: float
    best_prompt: torch.Tensor
    best_epoch: int = 0
    stale_epochs: int = 0
    step: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    eval_seconds: float = 0.0


def _backward(model: SoftPromptModel, batch: Batch, grad_accum: int, state: _LoopState) -> float:
    loss, _, slots = model.backward_mean_loss(batch.input_ids, batch.attention_mask, batch.labels, 1 / grad_accum)
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss became {loss} at step {state.step + 1}; lower --lr or check the data. "
            "Nothing was saved from this run"
        )
    state.real_tokens += batch.real_tokens
    state.padded_tokens += slots  # token slots computed, padding included
    return loss


def _step(params, optimizer, scheduler, max_grad_norm: float) -> None:
    params = list(params)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _stop_early(state: _LoopState, epoch: int, eval_loss: float, embedding: torch.Tensor, config: TrainConfig) -> bool:
    if eval_loss < state.best_loss:
        state.best_loss, state.best_epoch, state.stale_epochs = eval_loss, epoch, 0
        state.best_prompt = embedding.detach().clone()
        return False
    state.stale_epochs += 1
    return bool(config.early_stopping) and state.stale_epochs >= config.early_stopping


def _log_record(handle, record: dict[str, Any]) -> None:
    handle.write(
        json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()})
        + "\n"
    )
    handle.flush()
