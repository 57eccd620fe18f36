"""What a soft prompt is, as every path uses it: vectors or per-layer keys/values, and the layer it enters at.

One concept covers the family (Lester et al., 2021; Li & Liang, 2021; Liu et al., 2022, P-tuning
v2 and Late Prompt Tuning):

==================  ==================================  =====================================
form / entry        entry = 0                           entry = k > 0 (a *late* prompt)
==================  ==================================  =====================================
``vectors``         prompt tuning: P vectors before     P vectors that replace the states of
                    the token embeddings                the P prompt slots entering layer k
``kv``              prefix tuning (a *deep* prompt):    P keys and values in each of the
                    P keys and values in every layer    layers k .. L-1
==================  ==================================  =====================================

Below a late prompt's entry layer the P slots are not empty: they hold ``below``, P frozen
vectors (the init's: a text's embeddings, an earlier prompt) run through the frozen layers as
ordinary inputs. So every prompt has keys and values of P slots in every layer, which is all a
cache, the engine and PEFT's prefix format need, and at its init a late prompt is exactly the
text (or prompt) it was initialised from. What a late prompt trains never reaches the layers
below its entry, so their work on a row is the same at every step: training computes it once
per row and reuses it (:mod:`softprompt.core.reuse`).

Positions: the P slots take positions 0 .. P-1 and a row's tokens P, P+1, ... in every layer,
for every form, as PEFT does for both of its prompt formats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch

from softprompt.core.errors import ConfigError


class Form(str, Enum):
    """``str`` subclass so configs round-trip through JSON and argparse unchanged."""

    VECTORS = "vectors"
    KV = "kv"


@dataclass(frozen=True)
class Prompt:
    """A soft prompt's tensors: ``weights`` is what training changes, ``below`` what it never does.

    weights: ``vectors``: [P, H]; ``kv``: [layers - entry, 2, kv_heads, P, head_dim] (keys, values).
    below: [P, H] when ``entry`` > 0, the inputs of the prompt slots under the entry layer; else None.
    """

    form: Form
    weights: torch.Tensor
    entry: int = 0
    below: torch.Tensor | None = None

    def __post_init__(self) -> None:
        expected = 2 if self.form is Form.VECTORS else 5
        if self.weights.ndim != expected:
            raise ConfigError(f"a {self.form.value} prompt has {expected} dimensions, got {tuple(self.weights.shape)}")
        if (self.entry > 0) != (self.below is not None):
            raise ConfigError("a prompt entering above layer 0 needs its frozen inputs below (and only then)")
        if self.below is not None and self.below.shape[0] != self.num_virtual_tokens:
            raise ConfigError(f"below has {self.below.shape[0]} slots, the prompt {self.num_virtual_tokens}")

    @property
    def num_virtual_tokens(self) -> int:
        return virtual_tokens(self.form, self.weights)

    @property
    def is_input(self) -> bool:
        """Vectors in front of the token embeddings: what an embedding-input engine (vLLM) can take."""
        return self.form is Form.VECTORS and self.entry == 0

    @property
    def name(self) -> str:
        """The method, in words."""
        kind = "prompt tuning" if self.form is Form.VECTORS else "deep prompt (prefix tuning)"
        return kind if self.entry == 0 else f"late {'prompt' if self.form is Form.VECTORS else 'deep prompt'}"

    def to(self, device: torch.device | str) -> Prompt:
        below = None if self.below is None else self.below.to(device)
        return replace(self, weights=self.weights.to(device), below=below)

    def detach(self) -> Prompt:
        below = None if self.below is None else self.below.detach()
        return replace(self, weights=self.weights.detach(), below=below)

    @property
    def nbytes(self) -> int:
        held = [self.weights] + ([] if self.below is None else [self.below])
        return sum(t.numel() * t.element_size() for t in held)


def virtual_tokens(form: Form, weights: torch.Tensor) -> int:
    """P, from a prompt's weights: [P, H] vectors, or [layers, 2, kv, P, d] keys/values."""
    return int(weights.shape[0] if form is Form.VECTORS else weights.shape[3])
