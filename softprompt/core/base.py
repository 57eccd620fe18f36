"""The frozen base model every other module receives: model, tokenizer, name and derived facts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.family import Family, read_family


@dataclass
class BaseModel:
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
    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)


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
