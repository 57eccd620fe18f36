"""Refuse, when it is loaded, a model that softprompt would run wrongly, and say why.

Two probes on three tokens, a few milliseconds even for large models, check what every path
relies on: the decoder's cache holds plain per-layer keys and values (so a prompt's keys/values
can be computed once and shared: recurrent and state-space layers hold something else), and
:func:`softprompt.core.decoder.lm_logits` on the decoder's output, fed through
:func:`softprompt.core.decoder.embed_tokens`, reproduces the model's own logits for the same ids
(so the embedding space and the head's extra scaling are right). An encoder-decoder model is
refused before any probe.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

from softprompt.core.decoder import embed_tokens, lm_logits, run_decoder
from softprompt.core.errors import ModelLoadError
from softprompt.core.frozen import FrozenModel

PROBE_IDS = (1, 2, 3)


def check_supported(base: FrozenModel) -> None:
    config = base.model.config
    kind = f"{base.name!r} ({config.model_type})"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(encoder_decoder_refusal(kind))
    why = _recurrent_layers(config)
    if why:
        raise ModelLoadError(f"{kind} is not supported: {why}")
    ids = torch.tensor([PROBE_IDS], device=base.device)
    with torch.no_grad():
        try:
            reference = base.model(input_ids=ids, use_cache=True)
        except Exception as exc:  # the model's own forward failing says nothing we could fix
            raise ModelLoadError(f"{kind} fails a 3-token forward pass: {exc}") from exc
        why = _cache_problem(getattr(reference, "cache", None), len(PROBE_IDS))
        if why:
            raise ModelLoadError(f"{kind} is not supported: {why}")
        mask = torch.ones_like(ids)
        positions = torch.arange(len(PROBE_IDS), device=base.device)[None]
        hidden, _ = run_decoder(base, embed_tokens(base, ids), mask, positions)
        ours, theirs = lm_logits(base, hidden).float(), reference.logits.float()
    tolerance = 1e-3 * (1 + float(theirs.abs().max()))
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-3, atol=tolerance):
        raise ModelLoadError(
            f"{kind} is not supported: its logits are not its LM head applied to its decoder's output on its "
            "input embeddings (the causal-LM forward does more than softprompt knows how to reproduce)"
        )


def encoder_decoder_refusal(kind: str) -> str:
    return f"{kind} is an encoder-decoder model; softprompt tunes soft prompts for decoder-only causal LMs"


def _recurrent_layers(config: PretrainedConfig) -> str | None:
    """Layers whose cache is a recurrent state (state-space, linear attention), from the cache the config asks for."""
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # an unusual config: the forward probe below decides
        return None
    recurrent = sum(any("LinearAttention" in c.__name__ for c in type(layer).__mro__) for layer in layers)
    if not recurrent:
        return None
    what = "its layers keep" if recurrent == len(layers) else f"{recurrent} of its {len(layers)} layers keep"
    return (
        f"{what} a recurrent state (state-space or linear attention) instead of keys and values, "
        "so a soft prompt's keys/values cannot be computed once and shared"
    )


def _cache_problem(cache: object, length: int) -> str | None:
    if not isinstance(cache, DynamicCache) or not cache.layers:
        return (
            f"its cache is {type(cache).__name__}, not per-layer keys and values (a recurrent model), "
            "so a soft prompt's keys/values cannot be computed once and shared"
        )
    for index, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if not isinstance(layer, DynamicLayer) or not isinstance(keys, torch.Tensor) or keys.ndim != 4:
            return f"its layer {index} caches {type(layer).__name__}, not plain keys and values"
        if keys.shape[2] != length:
            return f"its layer {index} does not cache one key per token"
    return None
