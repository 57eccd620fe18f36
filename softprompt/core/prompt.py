"""The soft prompt: ``num_virtual_tokens`` trainable vectors in the model's embedding space.

"The model's embedding space" is what its embedding *module* outputs, the vectors its first layer
receives for real tokens; for most families that is a row of the embedding table, for Gemma the
row times sqrt(hidden). Every init below goes through the module (softprompt.core.decoder), so a
prompt initialised from a text starts exactly where that text as ordinary tokens would be.

Initialisation matters more than anything else for how fast prompt tuning learns (Lester et
al., 2021, section 3.2). PEFT's RANDOM draws N(0, 1) vectors whose norm (~sqrt(hidden)) is far
from real token embeddings (~3 for SmolLM2), which stalls learning; ``random`` here samples from
the embedding matrix's own per-dimension statistics instead, and ``peft-random`` keeps PEFT's
behaviour for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.adapter import load_adapter
from softprompt.core.base import BaseModel
from softprompt.core.checks import check_types, shown
from softprompt.core.decoder import embed_tokens
from softprompt.core.errors import ConfigError


class Init(str, Enum):
    """``str`` subclass so configs round-trip through JSON and argparse unchanged."""

    RANDOM = "random"
    PEFT_RANDOM = "peft-random"
    TEXT = "text"
    VOCAB = "vocab"
    LABELS = "labels"
    FILE = "file"


# Lester et al. sample initial prompts from the 5,000 most common tokens; BPE vocabularies are
# ordered roughly by merge frequency, so the lowest ids are the most common ones.
FREQUENT_VOCAB = 5000

# Far beyond any useful prompt (Lester et al. use up to 150); the same bound adapter loading uses.
MAX_VIRTUAL_TOKENS = (1 << 24) - 1

# A residual MLP wider than this costs more than the model it steers.
MAX_REPARAM_HIDDEN = 1 << 16
# Vocabulary rows embedded at once when computing the embedding space's statistics.
VOCAB_CHUNK = 4096

# Maps our init names to PEFT's PromptTuningInit values for adapter_config.json.
PEFT_INIT_NAMES = {
    Init.RANDOM: "RANDOM",
    Init.PEFT_RANDOM: "RANDOM",
    Init.TEXT: "TEXT",
    Init.VOCAB: "SAMPLE_VOCAB",
    Init.LABELS: "SAMPLE_VOCAB",
    Init.FILE: "RANDOM",
}


@dataclass(frozen=True)
class PromptConfig:
    num_virtual_tokens: int = field(default=8, metadata={"help": "number of virtual tokens (soft prompt length)"})
    init: Init = field(default=Init.TEXT, metadata={"help": "initialisation: " + ", ".join(i.value for i in Init)})
    init_text: str = field(
        default="Write a detailed role-play instruction for an AI assistant:",
        metadata={"help": "text whose token embeddings start the prompt (init=text)"},
    )
    init_labels: tuple[str, ...] = field(
        default=(), metadata={"help": "class label words (init=labels); taken from the data when empty"}
    )
    init_file: str | None = field(default=None, metadata={"help": "adapter directory to start from (init=file)"})
    reparam_hidden: int = field(
        default=0,
        metadata={
            "help": "width of a residual MLP that produces the prompt while training (P-tuning / residual prompt "
            "tuning); the saved adapter holds its output, a plain prompt. 0: train the vectors directly"
        },
    )

    def __post_init__(self) -> None:
        check_types(self)  # also turns init into an Init and init_labels into a tuple
        if not 1 <= self.num_virtual_tokens <= MAX_VIRTUAL_TOKENS:
            raise ConfigError(
                f"num_virtual_tokens must be between 1 and {MAX_VIRTUAL_TOKENS}, got {shown(self.num_virtual_tokens)}"
            )
        if self.init is Init.TEXT and not self.init_text.strip():
            raise ConfigError("init=text needs a non-empty init_text")
        if self.init is Init.FILE and not self.init_file:
            raise ConfigError("init=file needs init_file (an adapter directory)")
        if not 0 <= self.reparam_hidden <= MAX_REPARAM_HIDDEN:
            raise ConfigError(f"reparam_hidden must be between 0 and {MAX_REPARAM_HIDDEN}, got {shown(self.reparam_hidden)}")


class SoftPrompt(nn.Module):
    """The trainable prompt: vectors [P, H], optionally produced by a residual MLP while training.

    With ``reparam_hidden`` the prompt is ``e + MLP(e)`` (Liu et al., 2021, P-tuning; Razdaibiedina
    et al., 2023, residual prompt tuning). The MLP's last layer starts at zero, so the prompt starts
    exactly at its initialisation. It depends on nothing but its own parameters, so inference needs
    only its output: :meth:`folded`, which is what adapters store. Parameters are fp32 always and
    cast to the model's dtype where they are injected.
    """

    def __init__(self, embedding: torch.Tensor, reparam_hidden: int = 0) -> None:
        super().__init__()
        if embedding.ndim != 2:
            raise ConfigError(f"a soft prompt is [num_virtual_tokens, hidden], got shape {tuple(embedding.shape)}")
        self.embedding = nn.Parameter(embedding.detach().clone().float())
        self.mlp: nn.Sequential | None = None
        if reparam_hidden:
            width = embedding.shape[1]
            last = nn.Linear(reparam_hidden, width)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(width, reparam_hidden), nn.ReLU(), last).to(embedding.device)

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embedding.shape[0])

    def forward(self) -> torch.Tensor:
        """The prompt [P, H] that goes in front of the tokens."""
        if self.mlp is None:
            return self.embedding
        return self.embedding + self.mlp(self.embedding)

    def folded(self) -> torch.Tensor:
        """The current prompt as a plain detached tensor [P, H]: what an adapter stores."""
        with torch.no_grad():
            return self().detach().clone()


def initial_embedding(config: PromptConfig, base: BaseModel, generator: torch.Generator) -> torch.Tensor:
    """The starting prompt [num_virtual_tokens, hidden] for ``config.init``, in the model's embedding space."""
    n, hidden = config.num_virtual_tokens, base.hidden_size
    if config.init is Init.RANDOM:
        mean, std = vocab_statistics(base)
        return mean + std * torch.randn(n, hidden, generator=generator)
    if config.init is Init.PEFT_RANDOM:
        return torch.randn(n, hidden, generator=generator)
    if config.init is Init.TEXT:
        return embed_ids(base, _tile(_token_ids(base.tokenizer, config.init_text), n))
    if config.init is Init.VOCAB:
        return embed_ids(base, _sample_vocab(base, n, generator))
    if config.init is Init.LABELS:
        return embed_ids(base, _label_ids(config, base, generator))
    loaded = load_adapter(Path(str(config.init_file))).embedding
    if loaded.shape != (n, hidden):
        raise ConfigError(
            f"init_file {config.init_file} holds a prompt of shape {tuple(loaded.shape)}, "
            f"expected ({n}, {hidden}): set num_virtual_tokens to {loaded.shape[0]}"
        )
    return loaded


@torch.no_grad()
def embed_ids(base: BaseModel, ids: list[int]) -> torch.Tensor:
    """[len(ids), H] fp32 on the CPU: the model's own input embeddings of these tokens."""
    return embed_tokens(base, torch.tensor(ids, dtype=torch.long, device=base.device)).float().cpu()


@torch.no_grad()
def vocab_statistics(base: BaseModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation [H] of every token's input embedding."""
    vocab = base.embedding_weight.shape[0]
    total = torch.zeros(base.hidden_size, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, vocab, VOCAB_CHUNK):
        rows = embed_ids(base, list(range(start, min(start + VOCAB_CHUNK, vocab)))).double()
        total += rows.sum(dim=0)
        squares += (rows * rows).sum(dim=0)
    mean = total / vocab
    variance = (squares - vocab * mean * mean) / max(vocab - 1, 1)  # unbiased, as torch.std
    return mean.float(), variance.clamp(min=0).sqrt().float()


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"init text {text!r} tokenizes to nothing")
    return list(ids)


def _tile(ids: list[int], n: int) -> list[int]:
    """Repeat or cut the ids to length n, as PEFT's TEXT init does."""
    return (ids * (n // len(ids) + 1))[:n]


def _sample_vocab(base: BaseModel, n: int, generator: torch.Generator) -> list[int]:
    special = set(base.tokenizer.all_special_ids)
    vocab = base.embedding_weight.shape[0]
    pool = torch.tensor([i for i in range(min(FREQUENT_VOCAB, vocab)) if i not in special])
    return pool[torch.randint(len(pool), (n,), generator=generator)].tolist()


def _label_ids(config: PromptConfig, base: BaseModel, generator: torch.Generator) -> list[int]:
    """The class-label words' tokens, then frequent vocabulary to fill the prompt."""
    if not config.init_labels:
        raise ConfigError("init=labels needs class label words (init_labels or a target column)")
    ids: list[int] = []
    for label in config.init_labels:
        ids.extend(_token_ids(base.tokenizer, " " + label))
    ids = ids[: config.num_virtual_tokens]
    rest = config.num_virtual_tokens - len(ids)
    return ids + (_sample_vocab(base, rest, generator) if rest else [])
