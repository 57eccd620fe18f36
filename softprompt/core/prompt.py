"""The soft prompt: ``num_virtual_tokens`` trainable vectors in the model's embedding space.

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

from softprompt.core.checks import check_types, shown
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


class SoftPrompt(nn.Module):
    """Holds the trainable prompt; fp32 always, cast to the model's dtype when injected."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        if embedding.ndim != 2:
            raise ConfigError(f"a soft prompt is [num_virtual_tokens, hidden], got shape {tuple(embedding.shape)}")
        self.embedding = nn.Parameter(embedding.detach().clone().float())

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embedding.shape[0])

    def forward(self) -> torch.Tensor:
        return self.embedding


def initial_embedding(
    config: PromptConfig,
    embeddings: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    generator: torch.Generator,
) -> torch.Tensor:
    """Build the starting [num_virtual_tokens, hidden] tensor for ``config.init``."""
    n = config.num_virtual_tokens
    weight = embeddings.detach().float().cpu()
    if config.init is Init.RANDOM:
        mean, std = weight.mean(dim=0), weight.std(dim=0)
        return mean + std * torch.randn(n, weight.shape[1], generator=generator)
    if config.init is Init.PEFT_RANDOM:
        return torch.randn(n, weight.shape[1], generator=generator)
    if config.init is Init.TEXT:
        ids = _token_ids(tokenizer, config.init_text)
        return weight[_tile(ids, n)].clone()
    if config.init is Init.VOCAB:
        return weight[_sample_vocab(tokenizer, weight.shape[0], n, generator)].clone()
    if config.init is Init.LABELS:
        return _label_init(config, weight, tokenizer, generator)
    from softprompt.core.adapter import load_adapter  # local import: adapter io depends on this module

    loaded = load_adapter(Path(str(config.init_file))).embedding
    if loaded.shape != (n, weight.shape[1]):
        raise ConfigError(
            f"init_file {config.init_file} holds a prompt of shape {tuple(loaded.shape)}, "
            f"expected ({n}, {weight.shape[1]}): set num_virtual_tokens to {loaded.shape[0]}"
        )
    return loaded


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"init text {text!r} tokenizes to nothing")
    return list(ids)


def _tile(ids: list[int], n: int) -> list[int]:
    """Repeat or cut the ids to length n, as PEFT's TEXT init does."""
    return (ids * (n // len(ids) + 1))[:n]


def _sample_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int, n: int, generator: torch.Generator) -> list[int]:
    special = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(min(FREQUENT_VOCAB, vocab_size)) if i not in special])
    return pool[torch.randint(len(pool), (n,), generator=generator)].tolist()


def _label_init(
    config: PromptConfig, weight: torch.Tensor, tokenizer: PreTrainedTokenizerBase, generator: torch.Generator
) -> torch.Tensor:
    if not config.init_labels:
        raise ConfigError("init=labels needs class label words (init_labels or a target column)")
    ids: list[int] = []
    for label in config.init_labels:
        ids.extend(_token_ids(tokenizer, " " + label))
    ids = ids[: config.num_virtual_tokens]
    rest = config.num_virtual_tokens - len(ids)
    ids += _sample_vocab(tokenizer, weight.shape[0], rest, generator) if rest else []
    return weight[ids].clone()
