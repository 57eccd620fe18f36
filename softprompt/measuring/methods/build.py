"""Build each method's trainable pieces around a freshly loaded base model.

A :class:`Tuned` is all the runner needs: what to optimise, the loss, how to score afterwards,
and how to save what a user would ship. PEFT methods wrap (and for LoRA, modify) the base
model in place, so every method gets its own freshly loaded base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.core.data import Batch
from softprompt.core.inject import inject, inject_labels
from softprompt.core.model import SoftPromptModel, run_decoder, token_nll
from softprompt.core.models import BaseModel
from softprompt.core.prompt import Init, PromptConfig, SoftPrompt, initial_embedding
from softprompt.measuring.classify import Scorer, hf_scorer, shared_scorer
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.fit import LossFn, hf_loss
from softprompt.measuring.methods.ptuning import ReparamPrompt
from softprompt.measuring.presets import Preset, few_shot_context

# Full fine-tuning writes the whole model; these are its file size, kept only if asked.
MODEL_FILES = ("model.safetensors",)


@dataclass
class Tuned:
    params: list[torch.Tensor]  # what the optimizer updates (empty: prompt engineering)
    loss: LossFn | None
    scorer: Callable[[], Scorer]
    save: Callable[[Path], Path]
    context: str = ""  # text before every input (instruction, examples); the scorer already holds it
    stored_params: int | None = None  # parameters in the saved artifact when they differ from params


def prompt_loss(base: BaseModel, prompt: Callable[[], torch.Tensor]) -> LossFn:
    """Target-token NLL with ``prompt()`` injected into every row (soft prompts, P-tuning)."""

    def loss(batch: Batch) -> tuple[torch.Tensor, int]:
        token_embeds = base.model.get_input_embeddings()(batch.input_ids)
        rows = batch.input_ids.shape[0]
        injected = inject(token_embeds, batch.attention_mask, [prompt()] * rows)
        hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
        return token_nll(base, hidden, inject_labels(batch.labels, injected))

    return loss


def prompt_config(spec: MethodSpec, preset: Preset) -> PromptConfig:
    init_text = preset.instruction.strip() or preset.template
    return PromptConfig(
        num_virtual_tokens=spec.num_virtual_tokens,
        init=Init(spec.init),
        init_text=init_text,
        init_labels=tuple(preset.words),
    )


def build(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int = 0) -> Tuned:
    builders = {
        Kind.ZERO_SHOT: _prompt_engineering,
        Kind.FEW_SHOT: _prompt_engineering,
        Kind.PROMPT_TUNING: _prompt_tuning,
        Kind.P_TUNING: _p_tuning,
        Kind.PREFIX_TUNING: _peft,
        Kind.LORA: _peft,
        Kind.FULL: _full,
    }
    return builders[spec.kind](spec, base, preset, train_rows, seed)


def _prompt_engineering(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    context = (
        few_shot_context(preset, train_rows, spec.shots, seed) if spec.kind is Kind.FEW_SHOT else preset.instruction
    )

    def save(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prompt.txt").write_text(context, encoding="utf-8")
        return directory

    return Tuned([], None, lambda: shared_scorer(base, [None], context), save, context=context)


def _prompt_tuning(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    model = SoftPromptModel.with_new_prompt(base, prompt_config(spec, preset), seed=seed)
    prompt = model.require_prompt()
    return Tuned(
        [prompt.embedding],
        prompt_loss(base, prompt),
        lambda: shared_scorer(base, [prompt.embedding.detach()]),
        model.save_pretrained,
    )


def _p_tuning(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    generator = torch.Generator().manual_seed(seed)
    config = prompt_config(spec, preset)
    torch.manual_seed(seed)  # the MLP's first layer
    reparam = ReparamPrompt(initial_embedding(config, base.embedding_weight, base.tokenizer, generator)).to(base.device)

    def save(directory: Path) -> Path:
        folded = SoftPromptModel(base, SoftPrompt(reparam.folded()), config)
        folded.save_pretrained(directory)
        reparam.save_state(directory)  # kept so training can resume with the MLP
        return directory

    return Tuned(
        list(reparam.parameters()),
        prompt_loss(base, reparam),
        lambda: shared_scorer(base, [reparam.folded()]),
        save,
        stored_params=spec.num_virtual_tokens * base.hidden_size,
    )


def _peft(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    torch.manual_seed(seed)
    config: LoraConfig | PrefixTuningConfig
    if spec.kind is Kind.LORA:
        config = LoraConfig(task_type="CAUSAL_LM", r=spec.rank, lora_alpha=2 * spec.rank, lora_dropout=0.0)
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec.num_virtual_tokens)
    model = get_peft_model(base.model, config)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    # Prefix tuning's keys and values carry no positions of their own: real tokens count from 0.
    pad_id = int(base.tokenizer.pad_token_id)
    return Tuned(
        params,
        hf_loss(model, base.accepts_position_ids),
        lambda: hf_scorer(model, pad_id, base.accepts_position_ids),
        _saver(model),
    )


def _full(spec: MethodSpec, base: BaseModel, preset: Preset, train_rows: list[dict], seed: int) -> Tuned:
    base.model.requires_grad_(True)
    pad_id = int(base.tokenizer.pad_token_id)
    return Tuned(
        list(base.model.parameters()),
        hf_loss(base.model, base.accepts_position_ids),
        lambda: hf_scorer(base.model, pad_id, base.accepts_position_ids),
        _saver(base.model),
    )


def _saver(model: Any) -> Callable[[Path], Path]:
    """save_pretrained of a PEFT or transformers model, returning the directory."""

    def save(directory: Path) -> Path:
        model.save_pretrained(str(directory))
        return directory

    return save
