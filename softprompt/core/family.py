"""What softprompt needs to know about a model family, read off the loaded model itself.

Every path calls the frozen model the same way (see :mod:`softprompt.core.decoder`); families
differ only in a few facts that this record holds: whether the decoder takes position ids (ALiBi
models such as bloom derive positions from the mask), how the causal-LM head turns hidden states
into logits beyond the linear layer (Cohere scales them, Granite divides them, Gemma 2/3 soft-cap
them), whether attention is limited to a sliding window, and whether the padding-free packed
training layout is exact for it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from transformers import PreTrainedModel

# Families whose every attention layer runs through transformers' attention interface after its
# own position handling, so the packed layout's registered attention function is exact for them.
# Each one is checked against the plain layout in tests/conformance (packed == plain loss and
# gradient); any other family trains with the shared-prefix layout, which uses the model's masks.
PACKABLE = frozenset(
    """
        llama mistral mixtral qwen2 qwen3 qwen2_moe qwen3_moe gemma gemma3_text phi phi3 gpt2 gpt_neox gptj
        opt olmo2 starcoder2 granite cohere smollm3
    """.split()
)


# Families the conformance matrix (tests/conformance, docs/architectures.md) proves every invariant
# for. Others load with a warning when the load-time probes (softprompt.core.refusals) pass.
VERIFIED = frozenset(
    """
        llama mistral mixtral qwen2 qwen3 qwen2_moe qwen3_moe gemma gemma2 gemma3_text phi phi3 gpt2
        gpt_neox gptj bloom opt falcon olmo2 stablelm starcoder2 granite cohere smollm3
    """.split()
)


@dataclass(frozen=True)
class Family:
    model_type: str
    accepts_position_ids: bool  # False: positions come from the attention mask (ALiBi)
    logit_scale: float  # logits = logit_scale * head(hidden), before soft-capping
    softcap: float | None  # logits = softcap * tanh(logits / softcap) when set
    window: int | None  # sliding-window attention span in tokens, on some layers; None: full attention
    packable: bool  # the packed training layout is exact (see PACKABLE)

    @property
    def max_span(self) -> int | None:
        """Longest stretch of cache slots (padding included) that stays exact under the window."""
        return None if self.window is None else self.window - 1


def read_family(model: PreTrainedModel) -> Family:
    config = model.config
    model_type = str(config.model_type)
    window = _window(config)
    softcap = getattr(config, "final_logit_softcapping", None)
    return Family(
        model_type=model_type,
        accepts_position_ids="position_ids" in inspect.signature(model.base_model.forward).parameters,
        logit_scale=_logit_scale(model),
        softcap=float(softcap) if softcap else None,
        window=window,
        packable=model_type in PACKABLE and window is None and config._attn_implementation == "sdpa",
    )


def _logit_scale(model: PreTrainedModel) -> float:
    """What the causal-LM forward multiplies the head's output by (Cohere, Granite); 1 elsewhere."""
    config = model.config
    scale = float(getattr(model, "logit_scale", 1.0) or 1.0)  # cohere keeps it on the module
    if getattr(config, "logits_scaling", None):  # granite divides
        scale /= float(config.logits_scaling)
    return scale


def _window(config: object) -> int | None:
    """The sliding window when any layer uses one (layer_types says which); None for full attention."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)
