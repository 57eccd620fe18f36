"""A frozen base model plus one soft prompt: loss, logits, save and load.

Everything that touches the model goes through the prompt core (:mod:`softprompt.core.decoder`,
:mod:`softprompt.core.layouts`, :mod:`softprompt.core.loss`); this class only holds the two
parts together and knows the adapter format. Training passes (row slices, multi-process lock
step) live in :mod:`softprompt.training.passes`, generation in :mod:`softprompt.inference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from softprompt.core.adapter import AdapterConfig, adapter_config_for, check_compatible, load_adapter, save_adapter
from softprompt.core.decoder import lm_logits
from softprompt.core.errors import AdapterError, ConfigError
from softprompt.core.forms import Form
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX, inject_labels
from softprompt.core.layouts import Layout, choose_layout, injected_hidden, layout_hidden, layout_pieces
from softprompt.core.loading import load_base_model
from softprompt.core.loss import token_nll
from softprompt.core.prompt import PEFT_INIT_NAMES, Init, PromptConfig, SoftPrompt, initial_prompt


class EntryStates(Protocol):
    """Rows' states entering a late prompt's layer, which the frozen layers below it compute the same at every
    step: :class:`softprompt.training.reuse.FrozenRows` keeps them, so each row's are computed once."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class Tunable(Protocol):
    """What the training loop trains: a soft prompt over a frozen model (:class:`SoftPromptModel`) or
    a model's own weights (:class:`softprompt.core.weights.WeightsModel`)."""

    base: FrozenModel
    entry_states: EntryStates | None

    @property
    def trained(self) -> nn.Module: ...

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]: ...

    def layout_for(self, width: int) -> Layout: ...

    def describe(self) -> dict[str, Any]: ...

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path: ...


class SoftPromptModel(nn.Module):
    """The frozen base model and a trainable (or loaded) soft prompt."""

    def __init__(self, base: FrozenModel, prompt: SoftPrompt | None = None, prompt_config: PromptConfig | None = None):
        super().__init__()
        self.base = base
        self.prompt = prompt
        self.prompt_config = prompt_config
        self.layout: Layout | None = None  # None: the fastest exact layout for each batch (choose_layout)
        self.entry_states: EntryStates | None = None  # a late prompt's reuse of the layers below it (training sets it)

    @classmethod
    def from_pretrained(
        cls,
        base: str | FrozenModel,
        adapter: str | Path | None = None,
        *,
        allow_base_mismatch: bool = False,
        **load_kwargs: Any,
    ) -> SoftPromptModel:
        """Load a base model (a reference or an already loaded one) and optionally an adapter (read first:
        a wrong path fails before a model loads)."""
        loaded = None if adapter is None else load_adapter(adapter)
        base_model = load_base_model(base, **load_kwargs) if isinstance(base, str) else base
        if adapter is None or loaded is None:
            return cls(base_model)
        check_compatible(base_model, loaded.config, Path(adapter), allow_base_mismatch)
        return cls(base_model, SoftPrompt.of(loaded.prompt).to(base_model.device))

    @classmethod
    def with_new_prompt(cls, base: FrozenModel, config: PromptConfig, seed: int = 0) -> SoftPromptModel:
        """A fresh, trainable prompt initialised as ``config`` says (same seed, same prompt)."""
        generator = torch.Generator().manual_seed(seed)
        start = initial_prompt(config, base, generator)
        with torch.random.fork_rng(
            devices=[]
        ):  # seeds the MLP's first layer, if any, without touching the caller's RNG
            torch.manual_seed(seed)
            prompt = SoftPrompt(
                start.weights, config.reparam_hidden, form=start.form, entry=start.entry, below=start.below
            )
        return cls(base, prompt.to(base.device), config)

    def layout_for(self, width: int) -> Layout:
        """The layout a pass over rows up to ``width`` tokens uses (``self.layout`` when set)."""
        prompt = self.require_prompt()
        return self.layout or choose_layout(self.base, prompt.num_virtual_tokens, width, prompt.form)

    def states_entering(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The rows' reused states entering a late prompt's layer, when training keeps them; else None."""
        prompt = self.prompt
        if prompt is None or not prompt.entry or self.entry_states is None:
            return None
        return self.entry_states(input_ids, attention_mask)

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed next-token loss over labelled tokens of left-padded rows, and their count."""
        if self.prompt is None:
            hidden, injected = injected_hidden(self.base, input_ids, attention_mask, [None] * input_ids.shape[0])
            return token_nll(self.base, hidden, inject_labels(labels, injected))
        layout = self.layout_for(input_ids.shape[1])
        states = self.states_entering(input_ids, attention_mask)
        piece = layout_hidden(self.base, self.prompt.value(), input_ids, attention_mask, labels, layout, states)
        return token_nll(self.base, *piece)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Logits [B, keep, vocab] of the last ``keep`` real-token positions (default: all of them).

        Vectors are injected into every row (the plain layout), the reference every faster path
        (cached prompt keys/values, the engine) is tested against; keys/values are each row's
        cache (a late prompt's frozen slots included), every layer run.
        """
        width = input_ids.shape[1]
        keep = keep or width
        if self.prompt is None or self.prompt.form is Form.VECTORS:
            prompts = [None if self.prompt is None else self.prompt.value()] * input_ids.shape[0]
            hidden, _ = injected_hidden(self.base, input_ids, attention_mask, prompts)
            return lm_logits(self.base, hidden[:, -keep:])
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        hidden, _ = layout_hidden(self.base, self.prompt.value(), input_ids, attention_mask, labels, "shared")
        return lm_logits(self.base, hidden[:, -keep:])

    @property
    def trained(self) -> SoftPrompt:
        """What training updates: the prompt."""
        return self.require_prompt()

    def describe(self) -> dict[str, Any]:
        """The prompt's facts for a run's metrics."""
        prompt = self.require_prompt()
        return {
            "method": prompt.frozen().name,
            "num_virtual_tokens": prompt.num_virtual_tokens,
            "form": prompt.form.value,
            "entry_layer": prompt.entry,
            "trainable_params": sum(p.numel() for p in prompt.parameters()),
            "init": self.prompt_config.init.value if self.prompt_config else None,
        }

    def require_prompt(self) -> SoftPrompt:
        if self.prompt is None:
            raise AdapterError("this model has no soft prompt (load an adapter or train one first)")
        return self.prompt

    def adapter_config(self, metrics: dict[str, Any] | None = None) -> AdapterConfig:
        init = self.prompt_config.init if self.prompt_config else Init.FILE
        text = self.prompt_config.init_text if init is Init.TEXT and self.prompt_config else None
        return adapter_config_for(self.base, self.require_prompt().frozen(), PEFT_INIT_NAMES[init], text, metrics)

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        return save_adapter(directory, self.require_prompt().frozen(), self.adapter_config(metrics))


def joint_loss(
    models: Sequence[SoftPromptModel],
    owners: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> list[tuple[torch.Tensor, int] | None]:
    """Per model: summed next-token loss over its own rows (``owners[row]`` indexes ``models``) and their count.

    The models share one frozen base and run in one pass: every row attends to its own model's
    prompt only, so each model's loss and gradient are those of its rows alone (a sweep's
    candidates, :mod:`softprompt.training.sweep`). None for a model with no rows here.
    """
    base = models[0].base
    if any(model.base is not base for model in models):
        raise ConfigError("models trained in the same passes must share one loaded base model")
    prompts = [model.require_prompt().value() for model in models]
    longest = max(prompt.num_virtual_tokens for prompt in prompts)
    form = Form.KV if any(p.form is Form.KV for p in prompts) else Form.VECTORS
    layout = models[0].layout or choose_layout(base, longest, input_ids.shape[1], form)
    states = _joint_entry_states(models, owners, input_ids, attention_mask)
    pieces = layout_pieces(base, prompts, owners, input_ids, attention_mask, labels, layout, states)
    return [None if piece is None else token_nll(base, *piece) for piece in pieces]


def _joint_entry_states(
    models: Sequence[SoftPromptModel], owners: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor | None:
    """Each row's reused states entering its own model's late prompt (every model reuses, or none does)."""
    reusing = [
        model.prompt is not None and bool(model.prompt.entry) and model.entry_states is not None for model in models
    ]
    if not any(reusing):
        return None
    if not all(reusing):
        raise ConfigError("in one pass, every late prompt reuses its frozen layers' work or none does")
    states = None
    for k, model in enumerate(models):
        rows = [row for row, owner in enumerate(owners) if owner == k]
        if not rows:
            continue
        index = torch.tensor(rows, device=input_ids.device)
        mine = model.states_entering(input_ids.index_select(0, index), attention_mask.index_select(0, index))
        assert mine is not None
        if states is None:
            states = mine.new_zeros(*input_ids.shape, mine.shape[-1])
        states[index] = mine
    return states
