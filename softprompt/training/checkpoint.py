"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One file, ``checkpoint.safetensors``: the prompt's tensors, their best state so far and the AdamW moments
as tensors, and the loop state (step, epoch, next batch, counters, metric records, the run's
configs, RNG state) as JSON in the safetensors metadata. One file means one atomic rename, so a
kill at any moment leaves either the previous checkpoint or the new one. No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from softprompt.core import run_files
from softprompt.core.errors import TrainingError
from softprompt.core.files import atomic_path


@dataclass
class Checkpoint:
    step: int  # optimizer steps done
    epoch: int  # epoch in progress (1-based)
    next_batch: int  # index of the next batch to run within ``epoch``
    prompt: dict[str, torch.Tensor]  # SoftPrompt state_dict: the vectors (and the MLP when reparameterised)
    best_prompt: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # AdamW state_dict
    progress: dict[str, Any] = field(default_factory=dict)  # counters, best loss, elapsed time
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines so far
    run: dict[str, Any] = field(default_factory=dict)  # configs needed to rebuild the run


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> Path:
    tensors = {f"prompt.{k}": v.detach().cpu().contiguous() for k, v in ckpt.prompt.items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in ckpt.best_prompt.items()})
    optimizer_state: dict[str, dict[str, list[int]]] = {}
    for index, state in ckpt.optimizer["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = (
                value.detach().cpu().reshape(-1).contiguous() if value.ndim == 0 else value.detach().cpu().contiguous()
            )
            optimizer_state.setdefault(str(index), {})[name] = list(value.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "step": ckpt.step,
        "epoch": ckpt.epoch,
        "next_batch": ckpt.next_batch,
        "param_groups": ckpt.optimizer["param_groups"],
        "optimizer_shapes": optimizer_state,
        "progress": ckpt.progress,
        "records": ckpt.records,
        "run": ckpt.run,
    }
    path = directory / run_files.CHECKPOINT
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"softprompt_checkpoint": json.dumps(meta)})
    return path


def load_checkpoint(directory: Path) -> Checkpoint:
    path = Path(directory) / run_files.CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"no checkpoint to resume from: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["softprompt_checkpoint"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise TrainingError(f"{path} is not a readable softprompt checkpoint: {exc}") from exc
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, shapes in meta["optimizer_shapes"].items():
        state[int(index)] = {name: tensors[f"optim.{index}.{name}"].reshape(shape) for name, shape in shapes.items()}
    torch.set_rng_state(tensors["rng.torch"])
    return Checkpoint(
        step=meta["step"],
        epoch=meta["epoch"],
        next_batch=meta["next_batch"],
        prompt=_prefixed(tensors, "prompt."),
        best_prompt=_prefixed(tensors, "best."),
        optimizer={"state": state, "param_groups": meta["param_groups"]},
        progress=meta["progress"],
        records=meta["records"],
        run=meta["run"],
    )


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
