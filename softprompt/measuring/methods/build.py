"""Build each method around a loaded base model: how it trains, scores and saves, and how a saved one scores.

Prompt tuning and P-tuning are trained by ``softprompt train``'s own trainer
(:func:`softprompt.training.train.train`, or several candidates at once with
:func:`softprompt.training.sweep.train_sweep`), so compare measures exactly what users run. The
methods that change weights (prefix tuning and LoRA through peft, full fine-tuning) train with
:func:`softprompt.measuring.methods.fit.fit`, which follows the trainer's recipe: same batches,
AdamW, schedule, clipping, step budget, early stopping. PEFT methods wrap (and for LoRA, modify)
the base model in place, so every such run gets its own freshly loaded base.

Compare trains during selection and scores the test rows later, from what was saved
(:func:`saved_scorer`): the test phase needs nothing from the runs but their files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.core.adapter import atomic_path, load_adapter
from softprompt.core.base import BaseModel
from softprompt.core.data import Example, Row
from softprompt.core.model import SoftPromptModel
from softprompt.core.prompt import Init, PromptConfig
from softprompt.measuring.classify import Scorer, engine_scorer, hf_scorer
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.fit import FitConfig, FitResult, fit, hf_loss
from softprompt.measuring.presets import Preset, few_shot_context
from softprompt.training.train import TrainConfig, train

# P-tuning's MLP width (Liu et al., 2021, use a two-layer MLP of a few hundred units).
P_TUNING_HIDDEN = 128
CONTEXT_FILE = "prompt.txt"  # what a prompt-engineering run saves: the text before every input

Fit = Callable[[list[Example], FitConfig, Path, list[Example]], FitResult]


@dataclass
class Tuned:
    fit: Fit | None  # trains in place (examples, config, output, validation rows); None for prompt engineering
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
        reparam_hidden=P_TUNING_HIDDEN if spec.kind is Kind.P_TUNING else spec.reparam_hidden,
    )


def trainer_config(config: FitConfig, output: Path, eval_batch_size: int = 16) -> TrainConfig:
    """``softprompt train``'s settings for a comparison's budget: steps, not epochs; fit's batch order and stopping."""
    return TrainConfig(
        output=str(output),
        lr=config.lr,
        max_steps=config.steps,
        max_seconds=config.max_seconds,
        batch_size=config.batch_size,
        seed=config.seed,
        max_grad_norm=config.max_grad_norm,
        scheduler=config.scheduler,
        eval_every=config.eval_every or config.steps,  # at least once, at the end
        early_stopping=config.patience,
        eval_batch_size=eval_batch_size,
        group_by_length=False,
        progress=False,
        checkpoint_every=0,
    )


def context_for(spec: MethodSpec, preset: Preset, train_rows: list[Row], seed: int) -> str:
    """Prompt engineering's text before every input: the instruction (or not), then any solved examples."""
    if spec.kind is Kind.FEW_SHOT:
        return few_shot_context(preset, train_rows, spec.shots, seed, order=spec.order, instruction=spec.instruction)
    return preset.instruction if spec.instruction else ""


def build(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[Row], seed: int = 0) -> Tuned:
    if spec.kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        return _prompt_engineering(context_for(spec, preset, train_rows, seed), base)
    if spec.kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
        return _prompt_tuning(spec, base, preset, seed)
    if spec.kind is Kind.FULL:
        return _full(base, seed)
    return _peft(spec, base, seed)


def _prompt_engineering(context: str, base: BaseModel) -> Tuned:
    return Tuned(None, 0, lambda: engine_scorer(base, [None], context), lambda d: save_context(d, context), context=context)


def save_context(directory: Path, context: str) -> Path:
    """Prompt engineering's artifact: the text before every input, as ``prompt.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / CONTEXT_FILE) as tmp:
        tmp.write_text(context, encoding="utf-8")
    return directory


def _prompt_tuning(spec: MethodSpec, base: BaseModel, preset: Preset, seed: int) -> Tuned:
    model = SoftPromptModel.with_new_prompt(base, prompt_config(spec, preset), seed=seed)
    prompt = model.require_prompt()

    def run(examples: list[Example], config: FitConfig, output: Path, validation: list[Example]) -> FitResult:
        return fit_result(train(model, examples, validation, trainer_config(config, output)).records)

    return Tuned(
        run,
        sum(p.numel() for p in prompt.parameters()),
        lambda: engine_scorer(base, [prompt.frozen()]),
        lambda directory: model.save_pretrained(directory),
        stored_params=spec.num_virtual_tokens * base.hidden_size,
    )


def fit_result(records: list[dict[str, Any]]) -> FitResult:
    """A trainer run's records in fit's terms: steps, training time, losses, validation curve."""
    steps = [r for r in records if "loss" in r]
    curve = [(int(r["step"]), float(r["eval_loss"])) for r in records if r.get("eval_loss") is not None]
    best_step = min(curve, key=lambda point: (point[1], point[0]))[0] if curve else 0
    seconds = float(steps[-1]["elapsed"]) if steps else 0.0
    return FitResult(len(steps), seconds, [float(r["loss"]) for r in steps], curve, best_step)


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

    def run(examples: list[Example], config: FitConfig, output: Path, validation: list[Example]) -> FitResult:
        return fit(params, loss, examples, config, base.pad_id, base.device, validation=validation)

    def save(directory: Path) -> Path:
        model.save_pretrained(str(directory))
        return directory

    # Prefix tuning's keys and values carry no positions of their own: real tokens count from 0.
    return Tuned(
        run, sum(p.numel() for p in params), lambda: hf_scorer(model, base.pad_id, base.accepts_position_ids), save
    )


def saved_scorer(kind: Kind, base: BaseModel, directory: Path) -> Scorer:
    """A scorer for what a run saved in ``directory``; LoRA and prefix tuning wrap ``base`` in place."""
    if kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        return engine_scorer(base, [None], (directory / CONTEXT_FILE).read_text(encoding="utf-8"))
    if kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
        return engine_scorer(base, [load_adapter(directory).prompt.to(base.device)])
    if kind is Kind.FULL:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=base.dtype)
        model.to(base.device).eval()  # type: ignore[arg-type]
        return hf_scorer(model, base.pad_id, base.accepts_position_ids)
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(base.model, str(directory)).eval()
    return hf_scorer(wrapped, base.pad_id, base.accepts_position_ids)
