"""A frozen base model plus one soft prompt: loss, logits, save and load.

Everything that touches the model goes through the prompt core (:mod:`softprompt.core.decoder`,
:mod:`softprompt.core.layouts`, :mod:`softprompt.core.loss`); this class only holds the two
parts together and knows the adapter format. Training passes (row slices, multi-process lock
step) live in :mod:`softprompt.training.passes`, generation in :mod:`softprompt.inference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.core.adapter import AdapterConfig, check_compatible, load_adapter, save_adapter
from softprompt.core.base import BaseModel
from softprompt.core.decoder import lm_logits
from softprompt.core.errors import AdapterError, ConfigError
from softprompt.core.inject import inject_labels
from softprompt.core.layouts import Layout, choose_layout, injected_hidden, layout_hidden, layout_pieces
from softprompt.core.loss import token_nll
from softprompt.core.models import load_base_model
from softprompt.core.prompt import PEFT_INIT_NAMES, Init, PromptConfig, SoftPrompt, initial_embedding


class SoftPromptModel(nn.Module):
    """The frozen base model and a trainable (or loaded) soft prompt."""

    def __init__(self, base: BaseModel, prompt: SoftPrompt | None = None, prompt_config: PromptConfig | None = None):
        super().__init__()
        self.base = base
        self.prompt = prompt
        self.prompt_config = prompt_config
        self.layout: Layout | None = None  # None: the fastest exact layout for each batch (choose_layout)

    @classmethod
    def from_pretrained(
        cls,
        base: str | BaseModel,
        adapter: str | Path | None = None,
        *,
        allow_base_mismatch: bool = False,
        **load_kwargs: Any,
    ) -> SoftPromptModel:
        """Load a base model (a reference or an already loaded one) and optionally an adapter."""
        base_model = load_base_model(base, **load_kwargs) if isinstance(base, str) else base
        if adapter is None:
            return cls(base_model)
        loaded = load_adapter(adapter)
        check_compatible(base_model, loaded.config, Path(adapter), allow_base_mismatch)
        return cls(base_model, SoftPrompt(loaded.embedding).to(base_model.device))

    @classmethod
    def with_new_prompt(cls, base: BaseModel, config: PromptConfig, seed: int = 0) -> SoftPromptModel:
        """A fresh, trainable prompt initialised as ``config`` says (same seed, same prompt)."""
        generator = torch.Generator().manual_seed(seed)
        embedding = initial_embedding(config, base, generator)
        with torch.random.fork_rng(devices=[]):  # seeds the MLP's first layer, if any, without touching the caller's RNG
            torch.manual_seed(seed)
            prompt = SoftPrompt(embedding, config.reparam_hidden)
        return cls(base, prompt.to(base.device), config)

    def layout_for(self, width: int) -> Layout:
        """The layout a pass over rows up to ``width`` tokens uses (``self.layout`` when set)."""
        return self.layout or choose_layout(self.base, self.require_prompt().num_virtual_tokens, width)

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed next-token loss over labelled tokens of left-padded rows, and their count."""
        if self.prompt is None:
            hidden, injected = injected_hidden(self.base, input_ids, attention_mask, [None] * input_ids.shape[0])
            return token_nll(self.base, hidden, inject_labels(labels, injected))
        layout = self.layout_for(input_ids.shape[1])
        return token_nll(self.base, *layout_hidden(self.base, self.prompt(), input_ids, attention_mask, labels, layout))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Logits [B, keep, vocab] of the last ``keep`` real-token positions (default: all of them).

        The prompt is injected into every row (the plain layout), the reference every faster
        path (cached prompt keys/values, the engine) is tested against.
        """
        prompt = None if self.prompt is None else self.prompt()
        hidden, _ = injected_hidden(self.base, input_ids, attention_mask, [prompt] * input_ids.shape[0])
        return lm_logits(self.base, hidden[:, -(keep or input_ids.shape[1]) :])

    def require_prompt(self) -> SoftPrompt:
        if self.prompt is None:
            raise AdapterError("this model has no soft prompt (load an adapter or train one first)")
        return self.prompt

    def adapter_config(self, metrics: dict[str, Any] | None = None) -> AdapterConfig:
        prompt = self.require_prompt()
        config = self.base.model.config
        init = self.prompt_config.init if self.prompt_config else Init.FILE
        return AdapterConfig(
            num_virtual_tokens=prompt.num_virtual_tokens,
            token_dim=self.base.hidden_size,
            num_layers=getattr(config, "num_hidden_layers", None),
            num_attention_heads=getattr(config, "num_attention_heads", None),
            prompt_tuning_init=PEFT_INIT_NAMES[init],
            prompt_tuning_init_text=self.prompt_config.init_text if init is Init.TEXT and self.prompt_config else None,
            tokenizer_name_or_path=self.base.name,
            base_model_name_or_path=self.base.name,
            softprompt_base_fingerprint=self.base.fingerprint,
            softprompt_tokenizer_fingerprint=self.base.tokenizer_fingerprint,
            softprompt_metrics=dict(metrics or {}),
        )

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        return save_adapter(directory, self.require_prompt().folded(), self.adapter_config(metrics))


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
    prompts = [model.require_prompt()() for model in models]
    longest = max(prompt.shape[0] for prompt in prompts)
    layout = models[0].layout or choose_layout(base, longest, input_ids.shape[1])
    pieces = layout_pieces(base, prompts, owners, input_ids, attention_mask, labels, layout)
    return [None if piece is None else token_nll(base, *piece) for piece in pieces]
