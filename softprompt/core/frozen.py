"""The frozen base model every other module receives: model, tokenizer, name and derived facts.

``FrozenModel`` was ``BaseModel`` (still importable from ``softprompt``); renamed because pydantic's
``BaseModel``, which the server's request schemas use, is a different thing with the same name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.errors import ModelLoadError
from softprompt.core.family import Family, read_family


@dataclass
class FrozenModel:
    """A frozen causal LM with its (left-padding) tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def embedding_weight(self) -> torch.Tensor:
        """The embedding table. Not what the model feeds its first layer: use ``decoder.embed_tokens``."""
        return embedding_weight(self.model)

    @property
    def hidden_size(self) -> int:
        return int(self.embedding_weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.embedding_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_weight.dtype

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @cached_property
    def family(self) -> Family:
        return read_family(self.model)

    @property
    def accepts_position_ids(self) -> bool:
        return self.family.accepts_position_ids

    @cached_property
    def layers_owner(self) -> tuple[nn.Module, str]:
        """The module holding the decoder's layer list, and the list's attribute name (``layers``, ``h``)."""
        return decoder_layers(self.model)

    @cached_property
    def layers(self) -> nn.ModuleList:
        """The decoder's layers, in order: where a late prompt enters and below which work is reused."""
        parent, attribute = self.layers_owner
        return getattr(parent, attribute)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def kv_shape(self) -> tuple[int, int]:
        """(key/value heads, head dim) of every layer's cache, read off a one-token forward pass.

        A deep prompt holds that many numbers per layer and virtual token; reading them off the
        cache, rather than the config, gets grouped-query and multi-query attention right in every family.
        """
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            cache = self.model(input_ids=ids, use_cache=True).cache
        shapes = {tuple(layer.keys.shape[1::2]) for layer in cache.layers}
        if len(shapes) != 1:
            raise ModelLoadError(f"{self.name!r} caches keys of different shapes per layer {sorted(shapes)}")
        heads, dim = shapes.pop()
        return int(heads), int(dim)

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)


def decoder_layers(model: PreTrainedModel) -> tuple[nn.Module, str]:
    """Where the decoder keeps its ``num_hidden_layers`` blocks (``layers``, ``h``, ``decoder.layers``).

    The outermost module list of that length: experts' lists sit inside the layers.
    """
    count = getattr(model.config, "num_hidden_layers", None)
    found = [name for name, m in model.base_model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    top = min((name.count(".") for name in found), default=None)
    found = [name for name in found if name.count(".") == top]
    if len(found) != 1:
        raise ModelLoadError(
            f"cannot tell which of {model.config.model_type}'s module lists holds its {count} decoder layers"
        )
    path, _, attribute = found[0].rpartition(".")
    return (model.base_model.get_submodule(path) if path else model.base_model), attribute


def embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)  # narrows transformers' loose annotation for mypy
    return weight


def model_fingerprint(model: PreTrainedModel) -> str:
    """Identify base weights cheaply: architecture plus a strided sample of embedding rows.

    Rows are rounded to bfloat16 before hashing so the same model loaded in fp32, fp16 or bf16
    gets the same fingerprint, while a different checkpoint (or quantization) does not.
    """
    weight = embedding_weight(model).detach()
    step = max(1, weight.shape[0] // 512)
    sample = weight[::step].to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes()
    config = model.config
    header = f"{config.model_type}|{tuple(weight.shape)}|{getattr(config, 'num_hidden_layers', '')}"
    return "sha256:" + hashlib.sha256(header.encode() + sample).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(repr(vocab).encode("utf-8", "surrogatepass"))
    return "sha256:" + digest.hexdigest()[:32]
