"""Training runs: a soft prompt over a frozen base (``softprompt train``), or what compare trains beside it.

A run trains what its model says is trained (a prompt; LoRA's or every weight for compare's
baselines) and writes into its output directory: the artifact (a PEFT-format adapter and its
card, or the weights in their library's format), ``metrics.jsonl`` (a line per optimizer step
and per evaluation), ``metrics.json`` (the summary) and ``loss_curve.png``. The output directory
is checked for writability before any compute. A run alone is a sweep of one
(:func:`train_sweep`): several runs share passes where their models can.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import get_scheduler

from softprompt.core import run_files
from softprompt.core.config_types import check_types
from softprompt.core.data import DataConfig, Example, label_words, load_examples
from softprompt.core.errors import ConfigError, TrainingError
from softprompt.core.files import atomic_path, write_json
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.library import Choice, choose
from softprompt.core.loading import check_dtype_name, load_base_model, resolve_dtype
from softprompt.core.prompt import Init, PromptConfig, SoftPrompt
from softprompt.core.prompted import SoftPromptModel, Tunable
from softprompt.training import distributed, sharding
from softprompt.training.checkpoint import Checkpoint, load_checkpoint
from softprompt.training.driver import drive, heldout
from softprompt.training.heldout import mean_token_losses
from softprompt.training.loop import Progress, TrainingLoop
from softprompt.training.passes import MICRO_BATCH_TOKENS
from softprompt.training.plots import save_loss_curve
from softprompt.training.sharding import SHARD_MODES

log = logging.getLogger(__name__)

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass(frozen=True)
class TrainConfig:
    output: str = field(default="softprompt-out", metadata={"help": "directory for the adapter, metrics and plot"})
    lr: float = field(default=0.03, metadata={"help": "AdamW learning rate"})
    epochs: int = field(
        default=5,
        metadata={
            "help": "passes over the training rows (0: no limit; max_steps or max_seconds must then end the run)"
        },
    )
    max_steps: int = field(
        default=0, metadata={"help": "stop after this many optimizer steps; the schedule spans them (0: epochs decide)"}
    )
    max_seconds: float = field(
        default=0.0,
        metadata={
            "help": "stop after this much training time, keeping what was learned (0: no limit); with epochs 0 and "
            "no max_steps, the learning-rate schedule spans this time instead of a number of steps"
        },
    )
    batch_size: int = field(default=0, metadata={"help": "rows per batch; 0 picks one that fits memory"})
    grad_accum: int = field(default=1, metadata={"help": "batches per optimizer step"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and dropout: same seed, same prompt"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule: " + ", ".join(SCHEDULERS)})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps spent warming up the learning rate"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    # 4, not 16: scoring at 16 rows peaked above training's own memory (1592 vs 1459 MB for the whole
    # default run on SmolLM2-135M, docs/benchmarks.md) and was no faster.
    eval_batch_size: int = field(default=4, metadata={"help": "rows per batch when scoring held-out data"})
    early_stopping: int = field(
        default=0,
        metadata={"help": "stop after N held-out evaluations without improvement and keep the best prompt (0: off)"},
    )
    eval_every: int = field(
        default=0,
        metadata={
            "help": "score the held-out rows every N optimizer steps and at the end, not per epoch (0: per epoch)"
        },
    )
    eval_every_seconds: float = field(
        default=0.0,
        metadata={
            "help": "score the held-out rows every this many seconds of training and at the end, not per epoch "
            "(0: off); for budgets in time, where methods take steps at different speeds"
        },
    )
    group_by_length: bool = field(default=True, metadata={"help": "batch rows of similar length to cut padding"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    checkpoints: bool = field(
        default=True, metadata={"help": "write resumable checkpoints (off: only the results are written)"}
    )
    checkpoint_every: int = field(
        default=20,
        metadata={"help": "save a resumable checkpoint every N optimizer steps (and every epoch); 0: epochs only"},
    )
    micro_batch_tokens: int = field(
        default=MICRO_BATCH_TOKENS,
        metadata={
            "help": "tokens per forward/backward slice of a batch (padding included for models that "
            "cannot train padding-free, such as bloom): bounds activation memory "
            "(about 1.5 MB a token for SmolLM2-135M in float32) without changing the gradient; "
            "lower saves memory, higher can be faster"
        },
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the frozen base model: float32, bfloat16, float16, or auto (bfloat16 where the device "
            "has bf16 units: CUDA, or a CPU with AMX / AVX-512 BF16; float32 elsewhere); the prompt stays float32"
        },
    )
    reuse_frozen: bool = field(
        default=True,
        metadata={
            "help": "a late prompt (entry layer > 0): run the frozen layers below it once per row and reuse their "
            "output at every step and evaluation (off: every layer at every step, the reference)"
        },
    )
    frozen_cache_mb: int = field(
        default=2048,
        metadata={"help": "memory for the reused rows' states (rows beyond it are recomputed whenever they return)"},
    )
    shard: str = field(
        default="none",
        metadata={
            "help": "fsdp: split the frozen model's weights over the processes of a torchrun / accelerate launch, "
            "for models that do not fit one device (a warned no-op with one process); none: each holds it all"
        },
    )

    def __post_init__(self) -> None:
        check_types(self)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 0 or self.grad_accum < 1 or self.batch_size < 0 or self.eval_batch_size < 1:
            raise ConfigError("grad_accum and eval_batch_size must be >= 1, epochs and batch_size >= 0")
        if not (self.epochs or self.max_steps or self.max_seconds):
            raise ConfigError("epochs 0 (no limit) needs max_steps or max_seconds to end the run")
        if self.frozen_cache_mb < 0:
            raise ConfigError(f"frozen_cache_mb must be >= 0, got {self.frozen_cache_mb}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not 0 <= self.warmup_ratio < 1 or min(self.early_stopping, self.checkpoint_every, self.eval_every) < 0:
            raise ConfigError("warmup_ratio must be in [0, 1), early_stopping, eval_every and checkpoint_every >= 0")
        if not self.eval_every_seconds >= 0:
            raise ConfigError(f"eval_every_seconds must be >= 0, got {self.eval_every_seconds}")
        if self.max_steps < 0 or not self.max_seconds >= 0:
            raise ConfigError(f"max_steps and max_seconds must be >= 0, got {self.max_steps} and {self.max_seconds}")
        if self.micro_batch_tokens < 1:
            raise ConfigError(f"micro_batch_tokens must be >= 1, got {self.micro_batch_tokens}")
        check_dtype_name(self.model_dtype)
        if self.shard not in SHARD_MODES:
            raise ConfigError(f"shard must be one of {', '.join(SHARD_MODES)}, got {self.shard!r}")


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl lines: per step and epoch


def auto_batch_size(model: Tunable, examples: list[Example], budget_bytes: int | None = None) -> int:
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
    longest = max(len(e.input_ids) for e in examples) + model.added_tokens
    size = 32
    while size > 1 and size * longest * bytes_per_token > budget_bytes:
        size //= 2
    return size


# Adapter + checkpoint + metrics + plot for a 135M model take well under 1 MB; ask for margin.
MIN_FREE_BYTES = 16 << 20


def prepare_output(output: Path) -> None:
    """Fail before training, not after it, when results could not be saved."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(output / ".write-test") as probe:
            probe.write_bytes(b"ok")
        (output / ".write-test").unlink()
        free = shutil.disk_usage(output).free
    except OSError as exc:
        raise TrainingError(f"cannot write to output directory {output}: {exc.strerror or exc}") from exc
    if free < MIN_FREE_BYTES:
        raise TrainingError(f"only {free >> 20} MB free in {output}; free at least {MIN_FREE_BYTES >> 20} MB first")


@dataclass
class Candidate:
    """One run: its model (a prompt over a base, or weights) and its settings; a sweep holds several."""

    model: Tunable
    config: TrainConfig
    run_info: dict[str, Any] = field(default_factory=dict)
    measure: Callable[[TrainingLoop], dict[str, float]] | None = None  # more numbers per evaluation (see TrainingLoop)
    resume: Checkpoint | None = None  # continue exactly where this checkpoint stopped


@dataclass
class SweepResult:
    """Per candidate, in order: its result, or the error that ended it (the others went on)."""

    results: list[TrainResult | TrainingError]
    seconds: float  # wall time of the whole sweep, evaluations included
    train_tokens: int  # real tokens backpropagated, every candidate's together


def train(
    model: Tunable,
    train_set: list[Example],
    eval_set: list[Example],
    config: TrainConfig,
    *,
    resume: Checkpoint | None = None,
    run_info: dict[str, Any] | None = None,
    measure: Callable[[TrainingLoop], dict[str, float]] | None = None,
) -> TrainResult:
    """Train one model: a sweep of one. With ``resume``, continue exactly where that checkpoint stopped.

    Ctrl-C saves a checkpoint at the last completed optimizer step before exiting.
    """
    (result,) = train_sweep([Candidate(model, config, run_info or {}, measure, resume)], train_set, eval_set).results
    if isinstance(result, TrainingError):
        raise result
    return result


def train_sweep(candidates: list[Candidate], train_set: list[Example], eval_set: list[Example]) -> SweepResult:
    """Train every candidate on the same rows, in shared passes where their models allow; each result
    equals its run alone (up to float summation order, tests/training/test_driver.py)."""
    _check(candidates)
    started = time.perf_counter()
    shared: dict[str, Any] = {}  # what runs may share (a late prompt's frozen rows)
    loops = [
        make_loop(c.model, train_set, eval_set, c.config, c.run_info, c.resume, shared, c.measure) for c in candidates
    ]
    fresh = [loop for loop, c in zip(loops, candidates, strict=True) if c.resume is None]
    for loop, loss in zip(fresh, heldout(fresh), strict=True):
        loop.evaluate_before(loss)
    failed = drive(loops)
    finished = [loop for i, loop in enumerate(loops) if i not in failed]
    for loop in finished:
        keep_best(loop)
    scored = {id(loop): scored_state(loop) for loop in finished}
    unscored = [loop for loop in finished if scored[id(loop)] is None]
    after = {id(loop): loss for loop, loss in zip(unscored, heldout(unscored), strict=True)}
    after.update({key: loss for key, loss in scored.items() if loss is not None})
    results: list[TrainResult | TrainingError] = [
        failed[i] if i in failed else finish(loop, after[id(loop)]) for i, loop in enumerate(loops)
    ]
    tokens = sum(loop.progress.real_tokens for loop in loops)
    return SweepResult(results, time.perf_counter() - started, tokens)


def _check(candidates: list[Candidate]) -> None:
    if not candidates:
        raise ConfigError("a sweep needs at least one candidate")
    outputs = [c.config.output for c in candidates]
    if len(set(outputs)) != len(outputs):
        raise ConfigError(f"every candidate of a sweep needs its own output directory, got {outputs}")
    if len(candidates) > 1 and (distributed.world_size() > 1 or sharding.is_sharded(candidates[0].model.base.model)):
        raise ConfigError("sweeps train in one process: run them without torchrun/accelerate and without --shard")


def make_loop(
    model: Tunable,
    train_set: list[Example],
    eval_set: list[Example],
    config: TrainConfig,
    run_info: dict[str, Any] | None = None,
    resume: Checkpoint | None = None,
    shared: dict[str, Any] | None = None,
    measure: Callable[[TrainingLoop], dict[str, float]] | None = None,
) -> TrainingLoop:
    """One run's loop, ready to start (or restored): output checked, batch size, AdamW and schedule set.

    Runs given the same ``shared`` share what their models may reuse (late prompts with the same
    frozen layers, their rows' states).
    """
    trained = model.trained
    output = Path(config.output)
    distributed.on_main(lambda: prepare_output(output))
    torch.manual_seed(config.seed)
    batch_size = resume.progress["batch_size"] if resume else config.batch_size or _auto_global_batch(model, train_set)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / batch_size) / config.grad_accum)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    clock = TimeSchedule(config.scheduler, config.warmup_ratio, config.max_seconds)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    if total_steps:
        scheduler = get_scheduler(config.scheduler, optimizer, int(config.warmup_ratio * total_steps), total_steps)
    else:  # a time budget alone: the schedule runs on training seconds
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: clock.factor())
    loop = TrainingLoop(
        model, train_set, eval_set, config, output, optimizer, scheduler, Progress(batch_size), dict(run_info or {})
    )
    loop.measure = measure
    clock.elapsed = lambda: loop.progress.train_seconds  # the loop's progress, also once a resume replaces it
    model.begin_run(config.frozen_cache_mb << 20 if config.reuse_frozen else None, {} if shared is None else shared)
    if resume:
        loop.restore(resume)
    elif distributed.is_main():
        (output / run_files.RECORDS).unlink(missing_ok=True)
    return loop


@dataclass
class TimeSchedule:
    """A learning-rate schedule over training time: the fraction of ``max_seconds`` spent plays the step's part."""

    name: str
    warmup: float
    seconds: float
    elapsed: Callable[[], float] = lambda: 0.0

    def factor(self) -> float:
        done = min(self.elapsed() / self.seconds, 1.0)
        if done < self.warmup:
            return done / self.warmup
        if self.name in ("constant", "constant_with_warmup"):
            return 1.0
        rest = (done - self.warmup) / max(1.0 - self.warmup, 1e-9)
        return max(0.0, 1.0 - rest) if self.name == "linear" else 0.5 * (1.0 + math.cos(math.pi * rest))


def _auto_global_batch(model: Tunable, examples: list[Example]) -> int:
    """Rows per step over all processes: what fits the smallest device, times the process count."""
    return distributed.global_min(auto_batch_size(model, examples)) * distributed.world_size()


def keep_best(loop: TrainingLoop) -> None:
    """With early stopping, the run ends holding its best held-out prompt, not its last (the initial one
    when no evaluation improved on it)."""
    scored = math.isfinite(loop.progress.best_loss)  # no held-out rows: nothing to call best
    if loop.config.early_stopping and scored and loop.best_state is not None:
        loop.trained.load_state_dict(loop.best_state)


def scored_state(loop: TrainingLoop) -> float | None:
    """The held-out loss of the state the run ends with, when an evaluation already scored it: the best
    one kept by early stopping, or the last step's. None when it must be scored."""
    progress = loop.progress
    if loop.config.early_stopping and math.isfinite(progress.best_loss) and loop.best_state is not None:
        return progress.best_loss
    last = [r for r in loop.records if r.get("eval_loss") is not None]
    if last and last[-1]["step"] == loop.step and progress.evaluated_step == loop.step:
        return float(last[-1]["eval_loss"])
    return None


def finish(loop: TrainingLoop, after: float) -> TrainResult:
    """Save the kept state (held-out loss ``after``): adapter or weights, metrics and plot."""
    model, config, progress = loop.model, loop.config, loop.progress
    let_go = model.end_run()  # what the run kept (a late prompt's rows' states) goes once it is scored
    seconds = max(progress.train_seconds, 1e-9)
    metrics = {
        "base_model": model.base.name,
        **model.describe(),
        "heldout_loss_before": progress.heldout_loss_before,
        "heldout_loss_after": after,
        "train_seconds": progress.train_seconds,
        "eval_seconds": progress.eval_seconds,
        "train_tokens_per_second": progress.real_tokens / seconds,
        "train_padded_tokens_per_second": progress.padded_tokens / seconds,
        "train_rows": len(loop.train_set),
        "eval_rows": len(loop.eval_set),
        "epochs_run": loop.epoch - 1,
        "optimizer_steps": loop.step,
        "best_step": progress.best_step,
        "best_heldout_loss": progress.best_loss,
        "stopped_early": progress.stopped_early,
        "batch_size": progress.batch_size,
        "processes": distributed.world_size(),
        **let_go,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **provenance(loop),
        "config": asdict(config),
    }
    if distributed.is_main():
        what = metrics.get("method", "")
        if "num_virtual_tokens" in metrics:
            what += f", {metrics['num_virtual_tokens']} virtual tokens"
        save_loss_curve(loop.records, loop.output / run_files.CURVE, title=f"{model.base.name}: {what}")
        model.save(loop.output, metrics, loop.records, loop.run_info)  # a card shows the curve
        write_json(loop.output / run_files.METRICS, metrics)
    distributed.barrier()  # the adapter exists for every rank once train() returns
    return TrainResult(output=loop.output, metrics=metrics, records=loop.records)


def provenance(loop: TrainingLoop) -> dict[str, Any]:
    """Where the run's rows came from and how the kept state scored on validation: what a prompt library
    lists, and what lets compare refuse a library prompt trained on the very files it is testing on."""
    run = loop.run_info
    data = run.get("data") or {}
    found: dict[str, Any] = {}
    if data.get("data"):
        source = Path(str(data["data"]))
        found["data"] = str(source.resolve()) if source.exists() else str(data["data"])
    if run.get("task"):
        found["task"] = str(run["task"])
    if run.get("init_from"):
        found["init_from"] = {k: v for k, v in run["init_from"].items() if k != "scores"}
    step = loop.progress.best_step if loop.config.early_stopping else loop.step
    scored = [r for r in loop.records if r.get("eval_loss") is not None and r["step"] == step]
    if scored:
        found["validation"] = {k: v for k, v in scored[-1].items() if k.startswith("val_") or k == "eval_loss"}
    return found


def tune(
    model: str,
    data: DataConfig,
    prompt: PromptConfig,
    training: TrainConfig,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> TrainResult:
    """Load a base model and data, initialise a prompt and train it: ``softprompt train`` in Python.

    Under ``torchrun`` / ``accelerate launch`` every process calls this; see softprompt.training.distributed.
    """
    data.require_files()  # a typo costs a second, not a model load
    prompt.require_files()
    device = distributed.setup(device)
    distributed.on_main(lambda: prepare_output(Path(training.output)))
    with distributed.main_first():  # rank 0 fills the model and dataset caches, the others read them
        dtype = resolve_dtype(training.model_dtype, device)
        load_to = sharding.load_device(training.shard, device)
        base = load_base_model(model, trust_remote_code=trust_remote_code, device=load_to, dtype=dtype)
        train_set, held_out = load_examples(data, base.tokenizer)
    sharding.shard_model(base, training.shard, device)  # outside main_first: every rank shards together
    if prompt.init is Init.LABELS and not prompt.init_labels:
        prompt = replace(prompt, init_labels=label_words(data))
    started_from = None
    if prompt.init is Init.LIBRARY:
        started_from = from_library(prompt, base, held_out, training.eval_batch_size)
        prompt = started_from.config(prompt)
    tuned = SoftPromptModel.with_new_prompt(base, prompt, seed=training.seed)
    run_info = {
        "model": model,
        "trust_remote_code": trust_remote_code,
        "data": asdict(data),
        "prompt": asdict(prompt),
        "train": asdict(training),
        **({"init_from": started_from.record()} if started_from else {}),
    }
    return train(tuned, train_set, held_out, training, run_info=run_info)


def from_library(prompt: PromptConfig, base: FrozenModel, held_out: list[Example], batch_size: int) -> Choice:
    """init=library for ``softprompt train``: the library prompt with the lowest held-out loss, every one
    scored in the same shared passes."""
    if not held_out:
        raise ConfigError("--init library chooses on held-out rows: give --eval-data or an --eval-split above 0")

    def score(starts: list[Prompt]) -> list[dict[str, float]]:
        models = [SoftPromptModel(base, SoftPrompt.of(p).to(base.device)) for p in starts]
        return [{"eval_loss": loss} for loss in mean_token_losses(models, held_out, batch_size)]

    return choose(prompt, base, score, rank=lambda s: (-s["eval_loss"],))


def resume(output: str | Path, *, device: str | None = None, epochs: int | None = None) -> TrainResult:
    """Continue an interrupted run from ``output/checkpoint.safetensors`` (``softprompt train --resume``)."""
    device = distributed.setup(device)
    ckpt = distributed.on_main(lambda: load_checkpoint(Path(output)))  # rank 0 reads, every rank gets it
    run = ckpt.run
    if not run:
        raise TrainingError(f"{output}: the checkpoint does not record its run; resume through the Python API")
    training = TrainConfig(**{**run["train"], "output": str(output), **({"epochs": epochs} if epochs else {})})
    data, prompt = DataConfig(**run["data"]), PromptConfig(**run["prompt"])
    with distributed.main_first():
        dtype = resolve_dtype(training.model_dtype, device)
        load_to = sharding.load_device(training.shard, device)
        base = load_base_model(run["model"], trust_remote_code=run["trust_remote_code"], device=load_to, dtype=dtype)
        train_set, held_out = load_examples(data, base.tokenizer)
    sharding.shard_model(base, training.shard, device)
    model = SoftPromptModel.with_new_prompt(base, prompt, seed=training.seed)
    return train(model, train_set, held_out, training, resume=ckpt, run_info=run)
