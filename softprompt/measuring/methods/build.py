"""Build each method around a freshly loaded base model: how it trains, scores and saves.

Prompt tuning and P-tuning are trained by ``softprompt train``'s own trainer
(:func:`softprompt.training.train.train`), so compare measures exactly what users run. The
methods that change weights (prefix tuning and LoRA through peft, full fine-tuning) train with
:func:`softprompt.measuring.methods.fit.fit`, which follows the trainer's recipe: same batches,
AdamW, linear decay, clipping, step budget. PEFT methods wrap (and for LoRA, modify) the base
model in place, so every method gets its own freshly loaded base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.core.base import BaseModel
from softprompt.core.data import Example
from softprompt.core.model import SoftPromptModel
from softprompt.core.prompt import Init, PromptConfig
from softprompt.measuring.classify import Scorer, engine_scorer, hf_scorer
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.fit import FitConfig, FitResult, fit, hf_loss
from softprompt.measuring.presets import Preset, few_shot_context
from softprompt.training.train import TrainConfig, train

# P-tuning's MLP width (Liu et al., 2021, use a two-layer MLP of a few hundred units).
P_TUNING_HIDDEN = 128

Fit = Callable[[list[Example], FitConfig, Path], FitResult]


@dataclass
class Tuned:
    fit: Fit | None  # trains in place; None for prompt engineering
    trainable: int  # parameters the optimizer updates
    scorer: Callable[[], Scorer]
    save: Callable[[Path], Path]
    context: str = ""  # text before every input (instruction, examples); the scorer already holds it
    stored_params: int | None = None  # parameters in the saved artifact when they differ from trainable


def prompt_config(spec: MethodSpec, preset: Preset) -> PromptConfig:
    init_text = preset.instruction.strip() or preset.template
    return PromptConfig(
        num_virtual_tokens=spec.num_virtual_tokens,
        init=Init(spec.init),
        init_text=init_text,
        init_labels=tuple(preset.words),
        reparam_hidden=P_TUNING_HIDDEN if spec.kind is Kind.P_TUNING else 0,
    )


def build(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int = 0) -> Tuned:
    if spec.kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        return _prompt_engineering(spec, base, preset, train_rows, seed)
    if spec.kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
        return _prompt_tuning(spec, base, preset, seed)
    if spec.kind is Kind.FULL:
        return _full(base, seed)
    return _peft(spec, base, seed)


def _prompt_engineering(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    context = (
        few_shot_context(preset, train_rows, spec.shots, seed) if spec.kind is Kind.FEW_SHOT else preset.instruction
    )

    def save(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prompt.txt").write_text(context, encoding="utf-8")
        return directory

    return Tuned(None, 0, lambda: engine_scorer(base, [None], context), save, context=context)


def _prompt_tuning(spec: MethodSpec, base: BaseModel, preset: Preset, seed: int) -> Tuned:
    model = SoftPromptModel.with_new_prompt(base, prompt_config(spec, preset), seed=seed)
    prompt = model.require_prompt()

    def run(examples: list[Example], config: FitConfig, output: Path) -> FitResult:
        result = train(model, examples, [], trainer_config(config, output))
        losses = [r["loss"] for r in result.records if "loss" in r]
        return FitResult(int(result.metrics["optimizer_steps"]), float(result.metrics["train_seconds"]), losses)

    return Tuned(
        run,
        sum(p.numel() for p in prompt.parameters()),
        lambda: engine_scorer(base, [prompt.folded()]),
        lambda directory: model.save_pretrained(directory),
        stored_params=spec.num_virtual_tokens * base.hidden_size,
    )


def trainer_config(config: FitConfig, output: Path) -> TrainConfig:
    """``softprompt train``'s settings for a comparison's budget: steps, not epochs; fit's batch order."""
    return TrainConfig(
        output=str(output),
        lr=config.lr,
        max_steps=config.steps,
        max_seconds=config.max_seconds,
        batch_size=config.batch_size,
        seed=config.seed,
        max_grad_norm=config.max_grad_norm,
        group_by_length=False,
        progress=False,
        checkpoint_every=0,
    )


def _peft(spec: MethodSpec, base: BaseModel, seed: int) -> Tuned:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    torch.manual_seed(seed)
    config: LoraConfig | PrefixTuningConfig
    if spec.kind is Kind.LORA:
        config = LoraConfig(task_type="CAUSAL_LM", r=spec.rank, lora_alpha=2 * spec.rank, lora_dropout=0.0)
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec.num_virtual_tokens)
    return _weights(get_peft_model(base.model, config), base)


def _full(base: BaseModel, seed: int) -> Tuned:
    torch.manual_seed(seed)
    base.model.requires_grad_(True)
    return _weights(base.model, base)


def _weights(model: Any, base: BaseModel) -> Tuned:
    """A method that trains model weights (a PEFT wrapper or the model itself) with ``fit``."""
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    loss = hf_loss(model, base.accepts_position_ids)

    def run(examples: list[Example], config: FitConfig, output: Path) -> FitResult:
        return fit(params, loss, examples, config, base.pad_id, base.device)

    def save(directory: Path) -> Path:
        model.save_pretrained(str(directory))
        return directory

    # Prefix tuning's keys and values carry no positions of their own: real tokens count from 0.
    return Tuned(
        run, sum(p.numel() for p in params), lambda: hf_scorer(model, base.pad_id, base.accepts_position_ids), save
    )
