"""A causal LM trained through its weights: LoRA (a PEFT wrapper) or every weight (full fine-tuning).

``softprompt compare`` measures these methods beside soft prompts, so they train in the same loop
(:class:`softprompt.training.loop.TrainingLoop`) with the same batches, optimizer, schedule,
clipping, budgets and early stopping; only what the optimizer updates differs. This class gives
the loop what :class:`softprompt.core.prompted.SoftPromptModel` gives it: the module it trains, the
loss of a batch, and how to save.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.core.errors import ConfigError
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompted import Loss, bare_loss, padded_slots


class TrainedWeights(nn.Module):
    """The model's trainable parameters, registered again under flat names: what the loop's
    optimizer steps, checkpoints and keeps at its best. They are the model's own tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        found = {name.replace(".", "__"): p for name, p in model.named_parameters() if p.requires_grad}
        self.held = nn.ParameterDict(found)


class WeightsModel(nn.Module):
    """``model`` (the PEFT wrapper, or the base model itself) over ``base``, trained by its own weights.

    PEFT injects LoRA into ``base``'s own modules and full fine-tuning trains them in place, so the
    base model's pass is this model's pass: the loss is :func:`softprompt.core.prompted.bare_loss`,
    the same cross-entropy every method trains with.
    """

    added_tokens = 0

    def __init__(self, base: FrozenModel, model: nn.Module, method: str) -> None:
        super().__init__()
        self.base, self.model, self.method = base, model, method
        self.trained = TrainedWeights(model)

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Loss:
        """Summed cross-entropy of the labelled next tokens, and how many there were."""
        return bare_loss(self.base, input_ids, attention_mask, labels)

    @staticmethod
    def joint_loss(
        models: Sequence[WeightsModel],
        owners: list[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> list[Loss | None]:
        """A model's own weights run its rows alone: a pass holds one such model."""
        if len(models) != 1:
            raise ConfigError("models trained through their own weights cannot share a pass")
        return [models[0].loss(input_ids, attention_mask, labels)]

    @staticmethod
    def cost(models: Sequence[WeightsModel], lengths: list[int]) -> int:
        """Rows are padded: a pass costs rows x its longest row."""
        return padded_slots(lengths)

    def pass_key(self) -> Hashable:
        return id(self)

    def begin_run(self, frozen_cache_bytes: int | None, shared: dict[str, Any]) -> None:
        """Every layer trains, so nothing is the same from step to step: nothing to keep."""

    def end_run(self) -> dict[str, int]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "trainable_params": sum(p.numel() for p in self.trained.parameters())}

    def writes_with(self) -> list[Prompt | None]:
        return [None]

    def save(
        self, directory: Path, metrics: dict[str, Any], records: list[dict[str, Any]], run: dict[str, Any]
    ) -> Path:
        """The PEFT adapter (PEFT writes its own card), or the whole fine-tuned model, in its library's format."""
        self.model.save_pretrained(str(directory))  # type: ignore[operator]
        return Path(directory)
