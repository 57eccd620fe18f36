"""P-tuning: the soft prompt is produced by a small MLP from its own embedding (Liu et al., 2021).

The reparameterisation smooths optimisation early on; at inference it is dead weight, because
the prompt does not depend on the input. Training keeps the MLP (``reparam.safetensors``, so a
run can resume), and export folds it away: the adapter holds the MLP's output as a plain
prompt-tuning embedding that every prompt-tuning reader (softprompt, PEFT) loads.

Unlike PEFT's PromptEncoder, the MLP is residual with a zero-initialised last layer, so the
prompt starts exactly at its initialisation (text, vocab, ...) instead of at a random point.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from softprompt.core.adapter import atomic_path
from softprompt.core.errors import AdapterError

REPARAM_FILE = "reparam.safetensors"


class ReparamPrompt(nn.Module):
    """prompt = e + MLP(e), e: [n, H]; the MLP is H -> hidden -> H with a ReLU."""

    def __init__(self, embedding: torch.Tensor, hidden: int = 128) -> None:
        super().__init__()
        width = embedding.shape[1]
        self.embedding = nn.Parameter(embedding.detach().clone().float())
        last = nn.Linear(hidden, width)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), last)

    def forward(self) -> torch.Tensor:
        return self.embedding + self.mlp(self.embedding)  # [n, H]

    def folded(self) -> torch.Tensor:
        """The prompt the MLP produces, as a plain [n, H] tensor: what the adapter stores."""
        with torch.no_grad():
            return self().detach().clone()

    def save_state(self, directory: Path) -> Path:
        with atomic_path(directory / REPARAM_FILE) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        return directory / REPARAM_FILE

    @classmethod
    def load_state(cls, directory: Path) -> ReparamPrompt:
        """Rebuild the trainable module from ``reparam.safetensors`` to continue training."""
        path = Path(directory) / REPARAM_FILE
        if not path.is_file():
            raise AdapterError(f"{path} is missing: only P-tuning runs keep a reparameterisation to resume from")
        state = load_file(str(path))
        module = cls(state["embedding"], hidden=state["mlp.0.weight"].shape[0])
        module.load_state_dict(state)
        return module
