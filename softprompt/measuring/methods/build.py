"""Build each method around a loaded base model: what it trains, how it scores, and how a saved run scores.

Every trained method is trained by ``softprompt train``'s own loop (:func:`softprompt.training.train.train`,
or several prompts at once with :func:`softprompt.training.sweep.train_sweep`), so compare
measures exactly what users run and every method gets the same batches, optimizer, schedule,
clipping, budget and early stopping. Soft prompts (any form, any entry layer) are
:class:`~softprompt.core.prompted.SoftPromptModel`; LoRA (through peft) and full fine-tuning are
:class:`~softprompt.core.weights.WeightsModel`, and PEFT wraps (and for LoRA, modifies) the base
model in place, so every such run gets its own freshly loaded base.

Compare trains during selection and scores the test rows later, from what was saved
(:func:`saved_scorer`): the test phase needs nothing from the runs but their files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.core.adapter import load_adapter
from softprompt.core.data import Row
from softprompt.core.files import atomic_path
from softprompt.core.forms import Form
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel, Tunable
from softprompt.core.weights import WeightsModel
from softprompt.measuring.classify import Scorer, engine_scorer, hf_scorer
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.presets import Preset, few_shot_context

# P-tuning's MLP width (Liu et al., 2021, use a two-layer MLP of a few hundred units).
P_TUNING_HIDDEN = 128
CONTEXT_FILE = "prompt.txt"  # what a prompt-engineering run saves: the text before every input


def prompt_config(spec: MethodSpec, preset: Preset, base: FrozenModel) -> PromptConfig:
    """The soft prompt a prompt method's setting trains: its form, entry layer, length and init."""
    init_text = preset.instruction.strip() or preset.template
    return PromptConfig(
        num_virtual_tokens=spec.num_virtual_tokens,
        init=Init(spec.init),
        init_text=init_text,
        init_labels=tuple(preset.words),
        reparam_hidden=P_TUNING_HIDDEN if spec.kind is Kind.P_TUNING else spec.reparam_hidden,
        form=Form(spec.prompt_form),
        entry_layer=spec.entry_layer(base.num_layers),
    )


def weights_model(spec: MethodSpec, base: FrozenModel, seed: int) -> WeightsModel:
    """LoRA through peft (the base wrapped in place) or every weight of the base."""
    torch.manual_seed(seed)
    if spec.kind is Kind.FULL:
        base.model.requires_grad_(True)
        return WeightsModel(base, base.model, spec.method)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=spec.rank, lora_alpha=2 * spec.rank, lora_dropout=0.0)
    return WeightsModel(base, get_peft_model(base.model, config), spec.method)


def scorer_of(model: Tunable) -> Scorer:
    """Rank classification of what a run holds now: its prompt through the engine, or its weights."""
    if isinstance(model, SoftPromptModel):
        return engine_scorer(model.base, [model.require_prompt().frozen()])
    assert isinstance(model, WeightsModel)
    return hf_scorer(model.model, model.base.pad_id, model.base.accepts_position_ids)


def context_for(spec: MethodSpec, preset: Preset, train_rows: list[Row], seed: int) -> str:
    """Prompt engineering's text before every input: the instruction (or not), then any solved examples."""
    if spec.kind is Kind.FEW_SHOT:
        return few_shot_context(preset, train_rows, spec.shots, seed, order=spec.order, instruction=spec.instruction)
    return preset.instruction if spec.instruction else ""


def save_context(directory: Path, context: str) -> Path:
    """Prompt engineering's artifact: the text before every input, as ``prompt.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / CONTEXT_FILE) as tmp:
        tmp.write_text(context, encoding="utf-8")
    return directory


def saved_scorer(kind: Kind, base: FrozenModel, directory: Path) -> Scorer:
    """A scorer for what a run saved in ``directory``; LoRA wraps ``base`` in place."""
    if kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        return engine_scorer(base, [None], (directory / CONTEXT_FILE).read_text(encoding="utf-8"))
    if kind in (Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT):
        return engine_scorer(base, [load_adapter(directory).prompt.to(base.device)])
    if kind is Kind.FULL:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=base.dtype)
        model.to(base.device).eval()  # type: ignore[arg-type]
        return hf_scorer(model, base.pad_id, base.accepts_position_ids)
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(base.model, str(directory)).eval()
    return hf_scorer(wrapped, base.pad_id, base.accepts_position_ids)
