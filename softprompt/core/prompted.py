"""A frozen base model plus one soft prompt: loss, logits, save and load.

Everything that touches the model goes through the prompt core (:mod:`softprompt.core.decoder`,
:mod:`softprompt.core.layouts`, :mod:`softprompt.core.loss`); this class only holds the two
parts together and knows the adapter format. Training passes (row slices, multi-process lock
step) live in :mod:`softprompt.training.passes`, generation in :mod:`softprompt.inference`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from softprompt.core.adapter import AdapterConfig, adapter_config_for, check_compatible, load_adapter, save_adapter
from softprompt.core.card import write_model_card
from softprompt.core.decoder import lm_logits
from softprompt.core.errors import AdapterError, ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX, inject_labels
from softprompt.core.layouts import Layout, choose_layout, injected_hidden, layout_hidden, layout_pieces
from softprompt.core.loading import load_base_model
from softprompt.core.loss import token_nll
from softprompt.core.prompt import PEFT_INIT_NAMES, Init, PromptConfig, SoftPrompt, initial_prompt
from softprompt.core.reuse import FrozenRows


class EntryStates(Protocol):
    """Rows' states entering a late prompt's layer, which the frozen layers below it compute the same at every
    step: :class:`softprompt.core.reuse.FrozenRows` keeps them, so each row's are computed once."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


Loss = tuple[torch.Tensor, int]  # summed next-token loss over labelled tokens, and their count


class Tunable(Protocol):
    """What the training loop trains: a soft prompt over a frozen model (:class:`SoftPromptModel`) or
    a model's own weights (:class:`softprompt.core.weights.WeightsModel`).

    Training and scoring know a pass only as :meth:`joint_loss` over rows owned by one or several
    tunables (a sweep's candidates share passes; a run alone is a sweep of one) and its cost in
    token slots; layouts and reused frozen layers stay behind the prompt model's loss.
    """

    base: FrozenModel

    @property
    def trained(self) -> nn.Module:
        """What the optimizer updates, checkpoints and keeps at its best."""
        ...

    @property
    def added_tokens(self) -> int:
        """Positions each row gains in a pass (a prompt's virtual tokens), for sizing batches."""
        ...

    def pass_key(self) -> Hashable:
        """Tunables with equal keys can share one pass (:meth:`joint_loss`)."""
        ...

    @staticmethod
    def joint_loss(
        models: Sequence[Any],
        owners: list[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> list[Loss | None]:
        """Per model: the loss of the rows it owns (``owners[row]`` indexes ``models``) in one pass; None if none."""
        ...

    @staticmethod
    def cost(models: Sequence[Any], lengths: list[int]) -> int:
        """Token slots a pass of these models over rows of these lengths computes (padding included)."""
        ...

    def begin_run(self, frozen_cache_bytes: int | None, shared: dict[str, Any]) -> None:
        """A run starts: keep what it may reuse (None: nothing); runs given one ``shared`` share it."""
        ...

    def end_run(self) -> dict[str, int]:
        """The run is scored: let go of what it kept; facts about that for its metrics."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def writes_with(self) -> list[Prompt | None]:
        """What the base model runs with to write text: the prompt, or None (its own, trained, weights)."""
        ...

    def save(
        self, directory: Path, metrics: dict[str, Any], records: list[dict[str, Any]], run: dict[str, Any]
    ) -> Path:
        """A finished run's artifact, in its library's own format (and a model card where softprompt writes one)."""
        ...


def padded_slots(lengths: list[int]) -> int:
    """Token slots of a padded pass: rows x the longest row."""
    return len(lengths) * max(lengths)


def loss_of(model: Tunable, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Loss:
    """One model's loss over rows that are all its own: the joint pass of one."""
    result = model.joint_loss([model], [0] * input_ids.shape[0], input_ids, attention_mask, labels)[0]
    assert result is not None  # every row is the model's
    return result


def bare_loss(base: FrozenModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Loss:
    """The model's own loss, no prompt: a bare model's score, and what LoRA and fine-tuning train (their
    weights sit inside the model's modules, so the same decoder pass runs them)."""
    hidden, injected = injected_hidden(base, input_ids, attention_mask, [None] * input_ids.shape[0])
    return token_nll(base, hidden, inject_labels(labels, injected))


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

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Loss:
        """Summed next-token loss over labelled tokens of left-padded rows, and their count."""
        return loss_of(self, input_ids, attention_mask, labels)

    @staticmethod
    def joint_loss(
        models: Sequence[SoftPromptModel],
        owners: list[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> list[Loss | None]:
        """Per model: summed next-token loss over its own rows (``owners[row]`` indexes ``models``) and their count.

        The models share one frozen base and run in one pass: every row attends to its own model's
        prompt only, so each model's loss and gradient are those of its rows alone (a sweep's
        candidates, :func:`softprompt.training.train.train_sweep`). None for a model with no rows here.
        A model without a prompt (the bare base model) runs alone.
        """
        base = models[0].base
        if any(model.base is not base for model in models):
            raise ConfigError("models trained in the same passes must share one loaded base model")
        if len(models) == 1 and models[0].prompt is None:
            return [bare_loss(base, input_ids, attention_mask, labels)]
        prompts = [model.require_prompt().value() for model in models]
        layout = _joint_layout(models, input_ids.shape[1])
        states = _joint_entry_states(models, owners, input_ids, attention_mask)
        pieces = layout_pieces(base, prompts, owners, input_ids, attention_mask, labels, layout, states)
        return [None if piece is None else token_nll(base, *piece) for piece in pieces]

    @staticmethod
    def cost(models: Sequence[SoftPromptModel], lengths: list[int]) -> int:
        """Token slots of a pass: the rows' lengths when packed, else rows x the longest row."""
        packed = models[0].prompt is not None and _joint_layout(models, max(lengths)) == "packed"
        return sum(lengths) if packed else padded_slots(lengths)

    def pass_key(self) -> Hashable:
        """Prompts over one loaded base that enter at the same layer share passes (one pass runs one span of layers)."""
        return (id(self.base), self.prompt.entry if self.prompt is not None else None)

    @property
    def added_tokens(self) -> int:
        return self.prompt.num_virtual_tokens if self.prompt is not None else 0

    def begin_run(self, frozen_cache_bytes: int | None, shared: dict[str, Any]) -> None:
        """A late prompt keeps its rows' states entering its layer for the run, within ``frozen_cache_bytes``
        (None: every layer at every step); late prompts with the same frozen slots share them."""
        prompt = self.require_prompt()
        if not prompt.entry or frozen_cache_bytes is None:
            return
        frozen = prompt.frozen()
        key = FrozenRows.key(frozen)
        if key not in shared:
            shared[key] = FrozenRows(self.base, frozen, frozen_cache_bytes)
        self.entry_states = shared[key]

    def end_run(self) -> dict[str, int]:
        kept, self.entry_states = self.entry_states, None
        return {
            "frozen_rows_computed": getattr(kept, "computed_rows", 0),
            "frozen_rows_reused": getattr(kept, "reused_rows", 0),
        }

    def writes_with(self) -> list[Prompt | None]:
        return [self.require_prompt().frozen()]

    def save(
        self, directory: Path, metrics: dict[str, Any], records: list[dict[str, Any]], run: dict[str, Any]
    ) -> Path:
        """The adapter (PEFT's format) and its model card."""
        self.save_pretrained(directory, metrics={k: v for k, v in metrics.items() if k != "config"})
        write_model_card(directory, metrics, records, run, device=str(self.base.device))
        return directory

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


def _joint_layout(models: Sequence[SoftPromptModel], width: int) -> Layout:
    """One layout for every prompt of a pass: the fastest exact one for the longest prompt."""
    prompts = [model.require_prompt() for model in models]
    longest = max(prompt.num_virtual_tokens for prompt in prompts)
    form = Form.KV if any(p.form is Form.KV for p in prompts) else Form.VECTORS
    return models[0].layout or choose_layout(models[0].base, longest, width, form)


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
    if len(models) == 1:
        return models[0].states_entering(input_ids, attention_mask)
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
