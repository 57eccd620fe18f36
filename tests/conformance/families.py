"""Tiny random-weight models of every decoder-only family the conformance matrix covers.

Each is built from its config in-process (2 layers, hidden 32, the byte tokenizer's 258-token
vocabulary), so a whole family's checks take seconds. Where a family has a quirk softprompt must
get right, the config turns it on: Gemma's scaled embeddings and soft-capped logits, Granite's
embedding multiplier and logit scaling, Cohere's logit scale, sliding windows on Gemma 2/3.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from tests.conftest import save_random

# Sliding window of the windowed families' tiny configs: longer than every matrix sequence (so the
# shared checks run unchanged), short enough for tests/conformance/test_windows.py to cross it.
WINDOW = 128

COMMON = dict(
    vocab_size=258,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=512,
    bos_token_id=256,
    eos_token_id=256,
    pad_token_id=256,
)

# Per family: settings beyond COMMON (names are the family's own config fields).
OVERRIDES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},  # Mistral 7B v0.2+ attends to its whole context
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    "qwen2": {},
    "qwen3": {},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 16,
    },
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
    "gemma": {},  # embeddings scaled by sqrt(hidden) inside the embedding module
    "gemma2": {
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 3.0,
        "attn_logit_softcapping": 5.0,
    },
    "gemma3_text": {
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 3.0,
    },
    "phi": {},
    "phi3": {"original_max_position_embeddings": 512},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "gpt_neox": {},
    "gptj": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512, "rotary_dim": 4},
    "bloom": {"n_layer": 2, "n_head": 4},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "falcon": {"num_kv_heads": 2, "new_decoder_architecture": True},
    "olmo2": {},
    "stablelm": {},
    "starcoder2": {"sliding_window": None},
    "granite": {
        "embedding_multiplier": 2.0,
        "logits_scaling": 4.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.2,
    },
    "cohere": {"logit_scale": 0.25},
    "smollm3": {},
}

FAMILIES = list(OVERRIDES)

# Families the pinned transformers has but softprompt refuses when they are loaded, and why
# (tests/conformance/test_refusals.py loads each and checks the error).
REFUSED: dict[str, str] = {
    "mamba": "state-space layers: their cache is a recurrent state, not keys and values",
    "falcon_mamba": "state-space layers: their cache is a recurrent state, not keys and values",
    "jamba": "hybrid attention + Mamba layers: part of the cache is a recurrent state",
    "recurrent_gemma": "recurrent (RG-LRU) layers: part of the cache is a recurrent state",
    "qwen3_next": "hybrid attention + linear-attention layers: part of the cache is a recurrent state",
    "rwkv": "recurrent layers: the model keeps no per-layer keys and values at all",
    "t5": "an encoder-decoder model: softprompt tunes decoder-only causal LMs",
}


def tiny_config(family: str, **extra: Any) -> PretrainedConfig:
    cls = CONFIG_MAPPING[family]
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in {**COMMON, **OVERRIDES.get(family, {}), **extra}.items() if k in accepted}
    return cls(**settings)


def save_tiny_family(family: str, directory: Path, seed: int = 0, **extra: Any) -> Path:
    """Save a tiny random model of ``family`` with the byte tokenizer."""
    return save_random(tiny_config(family, **extra), directory, seed)
