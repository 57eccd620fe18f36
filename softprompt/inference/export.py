"""Export a soft prompt for tools that cannot read it as it is: vLLM's ``prompt_embeds``, PEFT's prefix format.

``--to peft-prefix`` writes any prompt (vectors or keys/values, at any entry layer) as what it is at
inference, its keys and values in every layer, in PEFT's ``PREFIX_TUNING`` format: PEFT, and tools
built on it such as lm-evaluation-harness, then load a late prompt too, and give its logits. It is
refused, with the reason, where PEFT provisions prefix keys/values of another shape than the
model's cache holds.

vLLM serves soft prompts through its ``prompt_embeds`` input: one ``[seq, hidden]`` tensor per
request, fed to the decoder in place of the embedding lookup, with position ids counting from 0.
:func:`build_prompt_embeds` builds that tensor exactly as softprompt injects a single unpadded
request, ``[virtual tokens][token embeddings]``, by calling the same :func:`~softprompt.core.inject.inject`
that training and generation use, so the engine sees what softprompt's own decode loop sees.

The tensor already contains the (optional) chat template, so it belongs in vLLM's
``LLM.generate({"prompt_embeds": ...})`` or its Completions API, not the Chat Completions API
(which would wrap the template around the soft prompt a second time). See docs/scaling.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from softprompt.core.adapter import adapter_config_for, save_adapter
from softprompt.core.decoder import embed_tokens, layers_of, prompt_cache
from softprompt.core.errors import AdapterError, ConfigError
from softprompt.core.files import atomic_path
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import inject
from softprompt.core.loading import DTYPE_NAMES, MODEL_DTYPES
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.generate import encode_prompt, format_inputs

TARGETS = ("vllm-prompt-embeds", "peft-prefix")
TENSOR_KEY = "prompt_embeds"


@dataclass(frozen=True)
class ExportConfig:
    to: str = field(default="vllm-prompt-embeds", metadata={"help": "export format: " + ", ".join(TARGETS)})
    output: str = field(
        default="prompt_embeds.safetensors",
        metadata={"help": "file to write (vllm-prompt-embeds: safetensors) or directory (peft-prefix: an adapter)"},
    )
    chat_template: bool = field(default=False, metadata={"help": "wrap the prompt in the tokenizer's chat template"})
    dtype: str = field(
        default="auto",
        metadata={"help": "tensor dtype: the served model's (e.g. bfloat16), or auto for the loaded model's"},
    )

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise ConfigError(f"export target must be one of {', '.join(TARGETS)}, got {self.to!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")


@torch.no_grad()
def build_prompt_embeds(model: SoftPromptModel, text: str, *, chat_template: bool = False) -> torch.Tensor:
    """The ``[num_virtual_tokens + n_tokens, hidden]`` embeddings of one request, as softprompt injects them.

    Tokenization is the one ``softprompt generate`` uses: special tokens (e.g. BOS) are added
    unless the chat template supplies them. Feed the result to an engine as ``prompt_embeds``
    (vLLM) or to a Hugging Face model as ``inputs_embeds[None]`` with default position ids.
    """
    base = model.base
    prompt = model.require_prompt().frozen()
    if not prompt.is_input:
        raise ConfigError(
            f"this adapter is a {prompt.name}: its keys/values enter the layers, and vLLM takes a soft prompt only "
            "as input embeddings (prompt_embeds); serve it with softprompt serve replicas (docs/scaling.md), "
            "or export it with --to peft-prefix"
        )
    formatted = format_inputs(base, [text], chat_template)
    ids = torch.tensor([encode_prompt(base.tokenizer, formatted[0], chat_template)], device=base.device)  # [1, n]
    token_embeds = embed_tokens(base, ids)  # [1, n, H]
    return inject(token_embeds, torch.ones_like(ids), [prompt.weights]).embeds[0]  # [P + n, H], no padding


def export_prompt_embeds(model: SoftPromptModel, text: str, config: ExportConfig) -> Path:
    """Write the request's embeddings to ``config.output`` (one tensor, key ``prompt_embeds``), atomically."""
    embeds = build_prompt_embeds(model, text, chat_template=config.chat_template)
    dtype = embeds.dtype if config.dtype == "auto" else MODEL_DTYPES[config.dtype]
    metadata = {
        "format": "pt",
        "softprompt_export": json.dumps(
            {
                "to": config.to,
                "text": text,
                "chat_template": config.chat_template,
                "num_virtual_tokens": model.require_prompt().num_virtual_tokens,
                "base_model": model.base.name,
                "base_fingerprint": model.base.fingerprint,
            }
        ),
    }
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        save_file({TENSOR_KEY: embeds.to("cpu", dtype).contiguous()}, str(tmp), metadata=metadata)
    return output


def load_prompt_embeds(path: str | Path) -> torch.Tensor:
    """Read an exported tensor back, e.g. in the process that calls vLLM."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(TENSOR_KEY)
    except (SafetensorError, OSError, KeyError) as exc:
        raise AdapterError(f"{path} is not a softprompt prompt-embeddings export: {exc}") from exc


@torch.no_grad()
def export_peft_prefix(model: SoftPromptModel, output: str | Path) -> Path:
    """Write the prompt's keys/values in every layer as a PEFT prefix-tuning adapter in ``output``, atomically."""
    base, prompt = model.base, model.require_prompt().frozen()
    check_peft_prefix(base, prompt.num_virtual_tokens)
    layers = layers_of(prompt_cache(base, [prompt]).cache)  # per layer [1, kv, P, d]
    weights = torch.stack([torch.stack([k[0], v[0]]) for k, v in layers]).float().cpu()  # [L, 2, kv, P, d]
    deep = Prompt(Form.KV, weights)
    metrics = {"exported_from": {"form": prompt.form.value, "entry_layer": prompt.entry}}
    return save_adapter(output, deep, adapter_config_for(base, deep, metrics=metrics))


def check_peft_prefix(base: FrozenModel, num_virtual_tokens: int) -> None:
    """Refuse a model whose cache PEFT's prefix format does not match.

    The adapter states its geometry (heads, width, layers), and PEFT keeps it, except where it
    derives its own from the model's config (grouped-query models): what PEFT would provision when
    loading the file is compared with what the model's cache holds.
    """
    from peft import PrefixTuningConfig
    from peft.utils import _prepare_prompt_learning_config

    heads, dim = base.kv_shape
    stated = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        token_dim=heads * dim,
        num_attention_heads=heads,
        num_layers=base.num_layers,
    )
    provisioned = _prepare_prompt_learning_config(stated, base.model.config.to_dict())
    peft_heads, width = int(provisioned.num_attention_heads), int(provisioned.token_dim)
    if (peft_heads, width) != (heads, heads * dim) or provisioned.num_layers != base.num_layers:
        raise ConfigError(
            f"PEFT's prefix format for {base.family.model_type} provisions {provisioned.num_layers} layers of "
            f"{peft_heads} heads x {width // max(peft_heads, 1)}, but the model caches {base.num_layers} layers of "
            f"{heads} heads x {dim}: PEFT cannot hold this prompt's keys/values"
        )
