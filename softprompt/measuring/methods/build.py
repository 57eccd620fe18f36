"""Build each method around a loaded base model: what it trains, how it scores, and how a saved run scores.

Every trained method is trained by ``softprompt train``'s own loop (:func:`softprompt.training.train.train`,
or several prompts at once with :func:`softprompt.training.train.train_sweep`), so compare
measures exactly what users run and every method gets the same batches, optimizer, schedule,
clipping, budget and early stopping. Soft prompts (any form, any entry layer) are
:class:`~softprompt.core.prompted.SoftPromptModel`; LoRA (through peft) and full fine-tuning are
:class:`~softprompt.core.weights.WeightsModel`, and PEFT wraps (and for LoRA, modifies) the base
model in place, so every such run gets its own freshly loaded base.

Every method, trained or not, scores and writes as a :class:`~softprompt.measuring.generation.Writer`:
a base model (LoRA injected into it in place, or fine-tuned weights), soft prompts, a text context,
all through the engine. Compare trains during selection and scores the test rows later, from what was
saved (:func:`saved_writer`): the test phase needs nothing from the runs but their files.
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
from softprompt.core.prompted import Tunable
from softprompt.core.weights import WeightsModel
from softprompt.measuring.generation import Writer
from softprompt.measuring.methods import PROMPTS, Kind, MethodSpec
from softprompt.measuring.presets import AnyPreset, few_shot_context

# P-tuning's MLP width (Liu et al., 2021, use a two-layer MLP of a few hundred units).
P_TUNING_HIDDEN = 128
CONTEXT_FILE = "prompt.txt"  # what a prompt-engineering run saves: the text before every input


def prompt_config(spec: MethodSpec, preset: AnyPreset, base: FrozenModel, library: str | None = None) -> PromptConfig:
    """The soft prompt a prompt method's setting trains: its form, entry layer, length and init (init library:
    still to be chosen from ``library``, :meth:`softprompt.measuring.methods.search.Task.from_library`)."""
    init_text = preset.instruction.strip() or preset.template
    return PromptConfig(
        num_virtual_tokens=spec.num_virtual_tokens,
        init=Init(spec.init),
        init_text=init_text,
        init_labels=tuple(getattr(preset, "words", ())),
        init_library=library if spec.init == Init.LIBRARY.value else None,
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


def writer_of(model: Tunable) -> Writer:
    """What a run holds now, to score and write with: its prompt, or its weights (LoRA injected into the
    base model's own modules by peft, full fine-tuning trained in place, so the base runs them)."""
    return Writer(model.base, model.writes_with())


def context_for(spec: MethodSpec, preset: AnyPreset, train_rows: list[Row], seed: int) -> str:
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


def saved_writer(kind: Kind, base: FrozenModel, directories: list[Path]) -> Writer:
    """What runs saved in ``directories`` write with. Soft prompts: one member per run, in one pass;
    every other method takes one directory (LoRA is injected into ``base`` in place)."""
    if kind in PROMPTS:
        return Writer(base, [load_adapter(d).prompt.to(base.device) for d in directories])
    (directory,) = directories
    if kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        return Writer(base, [None], (directory / CONTEXT_FILE).read_text(encoding="utf-8"))
    if kind is Kind.FULL:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=base.dtype)
        model.to(base.device).eval()  # type: ignore[arg-type]
        model.requires_grad_(False)
        return Writer(FrozenModel(model, base.tokenizer, f"{base.name} fine-tuned"))
    from peft import PeftModel

    PeftModel.from_pretrained(base.model, str(directory)).eval()  # injects the saved LoRA into base.model
    return Writer(base)
