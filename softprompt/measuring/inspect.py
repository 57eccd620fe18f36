"""What did the prompt learn? Nearest vocabulary tokens, norms, cross-prompt similarity.

Lester et al. (2021, section 7) read learned prompts by the nearest vocabulary tokens of each
virtual token under cosine similarity, found class labels among them, and compared prompts
learned for different tasks. Norms show how far a prompt drifted from the embedding manifold:
a virtual token much longer than real token embeddings is one the model never saw the like of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from softprompt.core.adapter import load_adapter
from softprompt.core.base import BaseModel
from softprompt.core.errors import AdapterError
from softprompt.core.prompt import embed_ids


@dataclass
class VirtualToken:
    index: int
    norm: float
    nearest: list[tuple[str, float]]  # (token text, cosine), best first


@dataclass
class PromptReport:
    adapter: str
    tokens: list[VirtualToken]

    @property
    def mean_norm(self) -> float:
        return sum(t.norm for t in self.tokens) / len(self.tokens)


@dataclass
class InspectReport:
    prompts: list[PromptReport]
    vocab_mean_norm: float
    vocab_norm_std: float
    # [A, A] cosine between mean-pooled prompts, and mean over tokens of the best-matching token
    pooled_similarity: list[list[float]]
    token_similarity: list[list[float]]


def nearest_tokens(base: BaseModel, prompt: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top_k`` vocabulary tokens closest (cosine) to each virtual token of ``prompt`` [P, H]."""
    vocab = F.normalize(vocab_embeddings(base), dim=-1)  # [V, H]
    cos = F.normalize(prompt.float().cpu(), dim=-1) @ vocab.T  # [P, V]
    values, ids = cos.topk(top_k, dim=-1)
    return [
        [(str(base.tokenizer.decode([int(i)])), float(v)) for v, i in zip(row_values, row_ids)]
        for row_values, row_ids in zip(values, ids)
    ]


def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(cosine of the mean-pooled prompts, mean best-match cosine of a's tokens among b's)."""
    pooled = float(F.cosine_similarity(a.mean(0), b.mean(0), dim=0))
    pairwise = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # [Pa, Pb]
    return pooled, float(pairwise.max(dim=1).values.mean())


def inspect_prompts(base: BaseModel, adapters: list[str | Path], top_k: int = 5) -> InspectReport:
    if not adapters:
        raise AdapterError("give at least one adapter directory to inspect")
    prompts = [load_adapter(a).embedding for a in adapters]
    for path, prompt in zip(adapters, prompts):
        if prompt.shape[1] != base.hidden_size:
            raise AdapterError(
                f"{path}: prompt width {prompt.shape[1]} != hidden size {base.hidden_size} of {base.name!r}"
            )
    vocab_norms = vocab_embeddings(base).norm(dim=-1)
    reports = []
    for path, prompt in zip(adapters, prompts):
        near = nearest_tokens(base, prompt, top_k)
        norms = prompt.norm(dim=-1).tolist()
        reports.append(PromptReport(str(path), [VirtualToken(i, n, k) for i, (n, k) in enumerate(zip(norms, near))]))
    pooled = [[similarity(a, b)[0] for b in prompts] for a in prompts]
    tokens = [[similarity(a, b)[1] for b in prompts] for a in prompts]
    return InspectReport(reports, float(vocab_norms.mean()), float(vocab_norms.std()), pooled, tokens)


def vocab_embeddings(base: BaseModel) -> torch.Tensor:
    """[V, H]: every token's input embedding as the model computes it, the space prompts live in."""
    return embed_ids(base, list(range(base.embedding_weight.shape[0])))
