"""Families that cannot hold softprompt's invariants are refused when loaded, with the reason."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from softprompt.core.errors import ModelLoadError
from softprompt.core.loading import load_base_model
from tests.conformance.families import COMMON, REFUSED
from tests.conftest import byte_tokenizer

T5_SIZES = dict(d_model=32, num_layers=1, num_heads=4, d_ff=64, d_kv=8)
MESSAGES = {"rwkv": "not per-layer keys and values", "t5": "encoder-decoder"}


def _save(family: str, directory: Path) -> Path:
    cls = CONFIG_MAPPING[family]
    accepted = inspect.signature(cls.__init__).parameters
    config = cls(**{k: v for k, v in {**COMMON, **T5_SIZES}.items() if k in accepted})
    model = T5ForConditionalGeneration(config) if family == "t5" else AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_unsupported_family_is_refused_with_its_reason(family, tmp_path):
    directory = _save(family, tmp_path / family)
    with pytest.raises(ModelLoadError) as refused:
        load_base_model(str(directory), device="cpu")
    message = str(refused.value)
    assert family in message and "\n" not in message
    assert MESSAGES.get(family, "recurrent state") in message
