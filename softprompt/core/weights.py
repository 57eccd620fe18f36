"""A causal LM trained through its weights: LoRA (a PEFT wrapper) or every weight (full fine-tuning).

``softprompt compare`` measures these methods beside soft prompts, so they train in the same loop
(:class:`softprompt.training.loop.TrainingLoop`) with the same batches, optimizer, schedule,
clipping, budgets and early stopping; only what the optimizer updates differs. This class gives
the loop what :class:`softprompt.core.prompted.SoftPromptModel` gives it: the module it trains, the
loss of a batch, and how to save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX, mask_positions
from softprompt.core.layouts import Layout
from softprompt.core.prompted import EntryStates


class TrainedWeights(nn.Module):
    """The model's trainable parameters, registered again under flat names: what the loop's
    optimizer steps, checkpoints and keeps at its best. They are the model's own tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        found = {name.replace(".", "__"): p for name, p in model.named_parameters() if p.requires_grad}
        self.held = nn.ParameterDict(found)


class WeightsModel(nn.Module):
    """``model`` (the PEFT wrapper, or the base model itself) over ``base``, trained by its own weights."""

    entry_states: EntryStates | None = None  # only late prompts reuse frozen layers

    def __init__(self, base: FrozenModel, model: nn.Module, method: str) -> None:
        super().__init__()
        self.base, self.model, self.method = base, model, method
        self.trained = TrainedWeights(model)

    def layout_for(self, width: int) -> Layout:
        """Rows are padded: a slice of a batch costs rows x its longest row."""
        return "plain"

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of the labelled next tokens, and how many there were.

        Labels sit at the end of left-padded rows, so only the logits from the first label's
        predecessor on are computed (``logits_to_keep``), never the whole [B, T, vocab]; position
        ids come from the mask, so left padding does not shift a short row.
        """
        labelled = (labels != IGNORE_INDEX).any(0).nonzero()
        keep = min(labels.shape[1] - int(labelled[0]) + 1 if len(labelled) else 2, labels.shape[1])
        extra = {"position_ids": mask_positions(attention_mask)} if self.base.accepts_position_ids else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **extra).logits
        targets = labels[:, -keep + 1 :]  # position i predicts token i + 1
        loss = nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        return loss, int((targets != IGNORE_INDEX).sum())

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "trainable_params": sum(p.numel() for p in self.trained.parameters())}

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """The PEFT adapter, or the whole fine-tuned model, in its library's own format."""
        self.model.save_pretrained(str(directory))  # type: ignore[operator]
        return Path(directory)
