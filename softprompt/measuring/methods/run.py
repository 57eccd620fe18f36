"""Run one method end to end: load, train within the budget, save, evaluate, measure.

``python -m softprompt.measuring.methods.run JOB.json RESULT.json`` does the same in a fresh process,
which is how compare measures each method's peak RSS on its own (ru_maxrss is per process).
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.core.adapter import write_json
from softprompt.core.data import DataConfig, tokenize_rows
from softprompt.core.errors import ConfigError
from softprompt.core.models import load_base_model
from softprompt.measuring.classify import classify, metrics
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.build import build
from softprompt.measuring.methods.fit import FitConfig
from softprompt.measuring.presets import TARGET_COLUMN, load_preset, load_task

log = logging.getLogger(__name__)

# What a user ships of each method: adapter or model weights and their config (not the trainer's
# checkpoint, metrics or plots, which the adapter directory also holds).
SHIPPED = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors", "prompt.txt")


@dataclass(frozen=True)
class RunSetup:
    model: str = field(metadata={"help": "base model reference"})
    preset: str = field(metadata={"help": "task preset name or JSON file"})
    data: str = field(metadata={"help": "directory with the preset's data files"})
    output: str = field(metadata={"help": "directory for adapters and results"})
    budget: int = field(default=30, metadata={"help": "training budget: optimizer steps per trained method"})
    batch_size: int = field(default=8, metadata={"help": "training rows per step"})
    max_seconds: float = field(default=0.0, metadata={"help": "training time cap per method (0: none)"})
    train_rows: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    test_rows: int | None = field(default=None, metadata={"help": "evaluate on the first N test rows"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per scoring batch"})
    max_length: int = field(default=128, metadata={"help": "truncate training examples to this many tokens"})
    seed: int = field(default=0, metadata={"help": "seed for inits, shuffling and in-context examples"})
    keep_full_model: bool = field(default=False, metadata={"help": "keep the fully fine-tuned model on disk"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ..."})

    def __post_init__(self) -> None:
        if not self.preset or not self.data:
            raise ConfigError("compare needs --preset and --data (the directory holding the preset's files)")
        if self.budget < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("budget, batch_size and eval_batch_size must be >= 1")


def run_method(spec: MethodSpec, setup: RunSetup, isolated: bool = False) -> dict[str, Any]:
    """Train (if the method trains), save and evaluate one method; a JSON-ready result."""
    preset = load_preset(setup.preset)
    test_rows = (
        min(x for x in (spec.test_rows, setup.test_rows) if x is not None)
        if (spec.test_rows or setup.test_rows)
        else None
    )
    task = load_task(preset, setup.data, setup.train_rows, test_rows)
    base = load_base_model(setup.model, device=setup.device)
    total_params = sum(p.numel() for p in base.model.parameters())
    tuned = build(spec, base, preset, task.train, setup.seed)
    slug = spec.name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("=", "")
    adapter_dir = Path(setup.output) / "adapters" / slug
    fitted = None
    if tuned.fit is not None:
        data = DataConfig(
            data=setup.data, template=preset.template, target_column=TARGET_COLUMN, max_length=setup.max_length
        )
        examples = tokenize_rows(preset.with_target(task.train, setup.data), data, base.tokenizer, setup.data)
        config = FitConfig(steps=setup.budget, lr=spec.lr, batch_size=setup.batch_size, seed=setup.seed,
                           max_seconds=setup.max_seconds)  # fmt: skip
        fitted = tuned.fit(examples, config, adapter_dir)
    base.model.requires_grad_(False)
    tuned.save(adapter_dir)
    adapter_bytes = sum((adapter_dir / name).stat().st_size for name in SHIPPED if (adapter_dir / name).is_file())
    if spec.kind is Kind.FULL and not setup.keep_full_model:
        shutil.rmtree(adapter_dir)
    texts = [preset.fill(row) for row in task.test]  # the scorer adds the context
    with torch.inference_mode():
        result = classify(tuned.scorer(), base.tokenizer, texts, preset.words, setup.eval_batch_size, base.device)
    preds = result.scores[0].argmax(-1).tolist()
    trainable = tuned.trainable
    return {
        "name": spec.name,
        "spec": asdict(spec),
        **metrics(preds, task.test_labels(), len(preset.labels)),
        "eval_rows": len(task.test),
        "trainable_params": trainable,
        "trainable_percent": 100 * trainable / total_params,
        "stored_params": tuned.stored_params if tuned.stored_params is not None else trainable,
        "base_params": total_params,
        "train_steps": fitted.steps if fitted else 0,
        "train_seconds": fitted.seconds if fitted else 0.0,
        "final_train_loss": sum(fitted.losses[-5:]) / len(fitted.losses[-5:]) if fitted else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if isolated else None,
        "adapter_bytes": adapter_bytes,
        "adapter_dir": str(adapter_dir) if adapter_dir.exists() else None,
        "ms_per_example": result.ms_per_example,
        "context_chars": len(tuned.context),
        "scores": result.scores[0].tolist(),  # [N, K] label log-probs, for ensembles
    }


def main(argv: list[str]) -> int:
    job, out = json.loads(Path(argv[0]).read_text(encoding="utf-8")), Path(argv[1])
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    result = run_method(MethodSpec(**job["spec"]), RunSetup(**job["setup"]), isolated=True)
    result["process_seconds"] = time.perf_counter() - started
    write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
