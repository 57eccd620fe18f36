"""What did the prompt learn? Nearest vocabulary tokens, norms, cross-prompt similarity.

Lester et al. (2021, section 7) read learned prompts by the nearest vocabulary tokens of each
virtual token under cosine similarity, found class labels among them, and compared prompts
learned for different tasks. Norms show how far a prompt drifted from the embedding manifold:
a virtual token much longer than real token embeddings is one the model never saw the like of.

Only vectors at the input live in the embedding space. A late prompt's vectors are states inside
the model and a deep prompt's are keys and values, so for those the report gives their norms
(per layer, for keys/values) and the nearest tokens of the frozen inputs they started from, if any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from softprompt.core.adapter import load_adapter
from softprompt.core.errors import AdapterError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompt import embed_ids


@dataclass
class VirtualToken:
    index: int
    norm: float
    nearest: list[tuple[str, float]]  # (token text, cosine), best first


@dataclass
class PromptReport:
    adapter: str
    tokens: list[VirtualToken]  # norms of the trained weights; nearest tokens of the inputs (see the module)
    kind: str = "prompt tuning"
    layer_norms: list[float] | None = None  # keys/values: mean norm per layer held, from the entry layer up

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


def nearest_tokens(base: FrozenModel, prompt: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
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


def inspect_prompts(base: FrozenModel, adapters: list[str | Path], top_k: int = 5) -> InspectReport:
    if not adapters:
        raise AdapterError("give at least one adapter directory to inspect")
    loaded = [load_adapter(a).prompt for a in adapters]
    for path, prompt in zip(adapters, loaded):
        inputs = prompt.weights if prompt.is_input else prompt.below
        if inputs is not None and inputs.shape[1] != base.hidden_size:
            raise AdapterError(
                f"{path}: prompt width {inputs.shape[1]} != hidden size {base.hidden_size} of {base.name!r}"
            )
    vocab_norms = vocab_embeddings(base).norm(dim=-1)
    reports = [_report(base, str(path), prompt, top_k) for path, prompt in zip(adapters, loaded)]
    flat = [p.weights.reshape(p.weights.shape[0], -1) if p.form is Form.VECTORS else _per_token(p) for p in loaded]
    pooled = [[_comparable(a, b, 0) for b in flat] for a in flat]
    tokens = [[_comparable(a, b, 1) for b in flat] for a in flat]
    return InspectReport(reports, float(vocab_norms.mean()), float(vocab_norms.std()), pooled, tokens)


def _report(base: FrozenModel, path: str, prompt: Prompt, top_k: int) -> PromptReport:
    inputs = prompt.weights if prompt.is_input else prompt.below
    near = nearest_tokens(base, inputs, top_k) if inputs is not None else [[] for _ in range(prompt.num_virtual_tokens)]
    norms = (prompt.weights if prompt.form is Form.VECTORS else _per_token(prompt)).norm(dim=-1).tolist()
    layer_norms = None
    if prompt.form is Form.KV:  # [layers, 2, kv, P, d] -> the mean norm of a virtual token's key and value per layer
        layer_norms = prompt.weights.flatten(3).permute(0, 1, 3, 2).norm(dim=-1).mean(dim=(1, 2)).tolist()
    tokens = [VirtualToken(i, n, k) for i, (n, k) in enumerate(zip(norms, near))]
    return PromptReport(path, tokens, prompt.name, layer_norms)


def _per_token(prompt: Prompt) -> torch.Tensor:
    """A keys/values prompt as one long vector per virtual token: [P, layers x 2 x kv x d]."""
    return prompt.weights.permute(3, 0, 1, 2, 4).reshape(prompt.num_virtual_tokens, -1)


def _comparable(a: torch.Tensor, b: torch.Tensor, which: int) -> float:
    """:func:`similarity` of two prompts of the same kind and width; NaN when they live in different spaces."""
    return similarity(a, b)[which] if a.shape[1] == b.shape[1] else math.nan


def vocab_embeddings(base: FrozenModel) -> torch.Tensor:
    """[V, H]: every token's input embedding as the model computes it, the space prompts live in."""
    return embed_ids(base, list(range(base.embedding_weight.shape[0])))
