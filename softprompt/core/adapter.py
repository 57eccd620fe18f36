"""Adapter files in PEFT's on-disk format, so PEFT and softprompt read each other's prompts.

A directory holds ``adapter_config.json`` (PEFT's config keys plus our own ``softprompt_*`` keys,
which PEFT ignores) and ``adapter_model.safetensors`` with the fp32 tensor ``prompt_embeddings``.
Each form of prompt (:mod:`softprompt.core.forms`) has its format:

- vectors at the input: PEFT's ``PROMPT_TUNING``, [num_virtual_tokens, hidden];
- keys/values in every layer: PEFT's ``PREFIX_TUNING`` (without ``prefix_projection``),
  [num_virtual_tokens, layers x 2 x kv_heads x head_dim], keys then values per layer, as PEFT's
  ``get_prompt`` reads them;
- a late prompt (entering above layer 0): ``SOFTPROMPT_LATE``, which PEFT refuses to load (it has
  no format for it): ``prompt_embeddings`` as one of the two above for the layers from the entry
  up, and ``below_embeddings`` [num_virtual_tokens, hidden], the frozen slots' inputs.
  ``softprompt export --to peft-prefix`` writes any prompt's keys/values as a PEFT prefix adapter.

Loading never unpickles: a ``.bin`` adapter is refused. Both files are written in full to temp
files beside their targets and only then renamed into place, weights first and config last, so a
failed save leaves the old adapter untouched and no temp files behind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from softprompt.core.config_types import shown
from softprompt.core.errors import AdapterError, BaseModelMismatchError
from softprompt.core.files import atomic_paths, json_text
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TENSOR_KEY = "prompt_embeddings"
BELOW_KEY = "below_embeddings"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20
PROMPT_TUNING, PREFIX_TUNING, LATE = "PROMPT_TUNING", "PREFIX_TUNING", "SOFTPROMPT_LATE"
PEFT_TYPES = (PROMPT_TUNING, PREFIX_TUNING, LATE)


@dataclass(frozen=True)
class AdapterConfig:
    """What ``adapter_config.json`` says; field names are PEFT's, ours carry a prefix.

    ``token_dim`` is what one virtual token holds per layer, as PEFT counts it: the hidden size
    for vectors, kv_heads x head_dim for keys/values (then ``num_attention_heads`` is kv_heads).
    """

    num_virtual_tokens: int
    token_dim: int
    num_layers: int | None = None
    num_attention_heads: int | None = None
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    base_model_name_or_path: str | None = None
    softprompt_version: int = FORMAT_VERSION
    softprompt_base_fingerprint: str | None = None
    softprompt_tokenizer_fingerprint: str | None = None
    softprompt_metrics: dict[str, Any] = field(default_factory=dict)
    peft_type: str = PROMPT_TUNING
    softprompt_form: str = Form.VECTORS.value
    softprompt_entry_layer: int = 0
    softprompt_hidden_size: int | None = None  # width of the frozen below-entry inputs of a late prompt

    @property
    def form(self) -> Form:
        return Form(self.softprompt_form)

    @property
    def layers_held(self) -> int:
        """Layers whose keys/values the stored weights hold (kv form)."""
        return int(self.num_layers or 0) - self.softprompt_entry_layer

    @property
    def stored_width(self) -> int:
        """Columns of ``prompt_embeddings``: one virtual token's numbers."""
        return self.token_dim if self.form is Form.VECTORS else self.layers_held * 2 * self.token_dim

    def to_json(self) -> dict[str, Any]:
        peft_keys: dict[str, Any] = {
            "task_type": "CAUSAL_LM",
            "num_transformer_submodules": 1,
            "inference_mode": True,
            "revision": None,
            "tokenizer_kwargs": None,
            "modules_to_save": None,
        }
        if self.peft_type == PREFIX_TUNING:
            peft_keys.update(encoder_hidden_size=self.token_dim, prefix_projection=False)
        values = asdict(self)
        if self.peft_type != PROMPT_TUNING:
            values.pop("prompt_tuning_init")
            values.pop("prompt_tuning_init_text")
        return {"peft_type": values.pop("peft_type"), **peft_keys, **values}


@dataclass
class Adapter:
    embedding: torch.Tensor  # ``prompt_embeddings`` as stored: [num_virtual_tokens, config.stored_width], fp32, cpu
    config: AdapterConfig
    below: torch.Tensor | None = None  # a late prompt's frozen inputs [num_virtual_tokens, hidden]

    @property
    def prompt(self) -> Prompt:
        """The stored prompt as every path takes it."""
        config = self.config
        weights = self.embedding
        if config.form is Form.KV:
            heads = int(config.num_attention_heads or 0)
            p = config.num_virtual_tokens
            weights = weights.view(p, config.layers_held, 2, heads, config.token_dim // heads).permute(1, 2, 3, 0, 4)
        return Prompt(config.form, weights.contiguous(), config.softprompt_entry_layer, self.below)


def flat_weights(prompt: Prompt) -> torch.Tensor:
    """The prompt's weights as ``prompt_embeddings`` stores them: [P, H], or [P, layers x 2 x kv x d] (PEFT's order)."""
    weights = prompt.weights.detach().to("cpu", torch.float32)
    if prompt.form is Form.VECTORS:
        return weights.contiguous()
    return weights.permute(3, 0, 1, 2, 4).reshape(prompt.num_virtual_tokens, -1).contiguous()  # [P, Lk * 2 * kv * d]


def adapter_config_for(
    base: FrozenModel,
    prompt: Prompt,
    init: str = "RANDOM",
    init_text: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> AdapterConfig:
    """The config of ``prompt`` trained on ``base``, in the format its form and entry layer call for."""
    heads, dim = base.kv_shape
    vectors = prompt.form is Form.VECTORS
    peft_type = LATE if prompt.entry else PROMPT_TUNING if vectors else PREFIX_TUNING
    return AdapterConfig(
        num_virtual_tokens=prompt.num_virtual_tokens,
        token_dim=base.hidden_size if vectors else heads * dim,
        num_layers=base.num_layers,
        num_attention_heads=getattr(base.model.config, "num_attention_heads", None) if vectors else heads,
        prompt_tuning_init=init,
        prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=base.name,
        base_model_name_or_path=base.name,
        softprompt_base_fingerprint=base.fingerprint,
        softprompt_tokenizer_fingerprint=base.tokenizer_fingerprint,
        softprompt_metrics=dict(metrics or {}),
        peft_type=peft_type,
        softprompt_form=prompt.form.value,
        softprompt_entry_layer=prompt.entry,
        softprompt_hidden_size=base.hidden_size if prompt.entry else None,
    )


def save_adapter(directory: str | Path, value: Prompt, config: AdapterConfig) -> Path:
    """Write ``value`` with ``config``, atomically."""
    directory = Path(directory)
    tensor = flat_weights(value)
    if tuple(tensor.shape) != (config.num_virtual_tokens, config.stored_width) or value.form is not config.form:
        raise AdapterError(
            f"prompt shape {tuple(tensor.shape)} ({value.form.value}) disagrees with its config "
            f"({config.num_virtual_tokens}, {config.stored_width}) ({config.form.value})"
        )
    tensors = {TENSOR_KEY: tensor}
    if value.below is not None:
        tensors[BELOW_KEY] = value.below.detach().to("cpu", torch.float32).contiguous()
    text = json_text(config.to_json())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_paths(directory / WEIGHTS_NAME, directory / CONFIG_NAME) as (weights_tmp, config_tmp):
            save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
            config_tmp.write_text(text, encoding="utf-8")
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot write adapter to {directory}: {exc}") from exc
    return directory


def load_adapter(directory: str | Path) -> Adapter:
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"adapter directory not found: {directory}")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
        hint = (
            f" (found {', '.join(pickled)}: pickle files are never loaded, convert to safetensors)" if pickled else ""
        )
        raise AdapterError(f"{weights} is missing{hint}")
    config = _read_config(directory / CONFIG_NAME)
    late = config.peft_type == LATE
    found = _read_tensors(weights, (TENSOR_KEY, BELOW_KEY) if late else (TENSOR_KEY,))
    embedding = found[TENSOR_KEY]
    if tuple(embedding.shape) != (config.num_virtual_tokens, config.stored_width):
        raise AdapterError(
            f"{weights}: {TENSOR_KEY} has shape {tuple(embedding.shape)}, but {CONFIG_NAME} says "
            f"({config.num_virtual_tokens}, {config.stored_width})"
        )
    below = found.get(BELOW_KEY)
    if below is not None and tuple(below.shape) != (config.num_virtual_tokens, config.softprompt_hidden_size):
        raise AdapterError(
            f"{weights}: {BELOW_KEY} has shape {tuple(below.shape)}, but {CONFIG_NAME} says "
            f"({config.num_virtual_tokens}, {config.softprompt_hidden_size})"
        )
    return Adapter(embedding=embedding, config=config, below=below)


def _read_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    # Only the prompt's tensors are read: other tensors in the file (however large) stay on disk.
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in keys if key in names}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterError(f"{path} is not a readable safetensors file: {exc}") from exc
    for key in keys:
        tensor = tensors.get(key)
        if tensor is None:
            raise AdapterError(f"{path} has no tensor {key!r} (found: {shown(names) if names else 'none'})")
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise AdapterError(f"{path}: {key} must be a 2-D float tensor, got {tensor.dtype} {tuple(tensor.shape)}")
        tensor = tensor.float()  # check after the cast: a float64 1e300 becomes inf in float32
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{path}: {key} contains NaN or infinite values (as float32)")
        tensors[key] = tensor
    return tensors


def _read_config(path: Path) -> AdapterConfig:
    if not path.is_file():
        raise AdapterError(f"{path} is missing")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; refusing to parse it")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, integers over 4300 digits, deep nesting
        raise AdapterError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    peft_type = raw.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise AdapterError(
            f"{path}: peft_type is {shown(peft_type)}; softprompt loads PROMPT_TUNING and PREFIX_TUNING adapters "
            "(and its own SOFTPROMPT_LATE)"
        )
    if raw.get("num_transformer_submodules", 1) not in (1, None):
        raise AdapterError(f"{path}: num_transformer_submodules must be 1 for a causal LM")
    if peft_type == PREFIX_TUNING and raw.get("prefix_projection"):
        raise AdapterError(
            f"{path}: prefix_projection is true, so the adapter stores an MLP that produces keys/values, not the "
            "keys/values themselves; softprompt loads prefix adapters trained without it"
        )
    known = AdapterConfig.__dataclass_fields__
    values = {k: v for k, v in raw.items() if k in known}
    if peft_type == PREFIX_TUNING:
        values.update(softprompt_form=Form.KV.value, softprompt_entry_layer=0)
    elif peft_type == PROMPT_TUNING:
        values.update(softprompt_form=Form.VECTORS.value, softprompt_entry_layer=0)
    for key in ("num_virtual_tokens", "token_dim"):
        if not _positive_int(values.get(key)):
            raise AdapterError(f"{path}: {key} must be a positive integer, got {shown(values.get(key))}")
    for key in ("num_layers", "num_attention_heads"):
        if values.get(key) is not None and not _positive_int(values[key]):
            if peft_type != PROMPT_TUNING:
                raise AdapterError(f"{path}: {key} must be a positive integer, got {shown(values[key])}")
            values[key] = None
    _check_layout(path, peft_type, values)
    if not _positive_int(values.get("softprompt_version", FORMAT_VERSION)):
        raise AdapterError(
            f"{path}: softprompt_version must be a positive integer, got {shown(values['softprompt_version'])}"
        )
    for key in (
        "prompt_tuning_init",
        "prompt_tuning_init_text",
        "tokenizer_name_or_path",
        "base_model_name_or_path",
        "softprompt_base_fingerprint",
        "softprompt_tokenizer_fingerprint",
    ):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise AdapterError(f"{path}: {key} must be a string, got {type(values[key]).__name__}")
    if not isinstance(values.get("softprompt_metrics", {}), dict):
        values["softprompt_metrics"] = {}
    values.setdefault("prompt_tuning_init", "RANDOM")
    values["prompt_tuning_init"] = values["prompt_tuning_init"] or "RANDOM"
    return AdapterConfig(**values)


def _check_layout(path: Path, peft_type: str, values: dict[str, Any]) -> None:
    """A prefix or late adapter's own fields: form, entry layer, and the shapes they imply."""
    if values.get("softprompt_form") not in {f.value for f in Form}:
        raise AdapterError(f"{path}: softprompt_form must be vectors or kv, got {shown(values.get('softprompt_form'))}")
    entry = values.get("softprompt_entry_layer", 0)
    if not isinstance(entry, int) or isinstance(entry, bool) or entry < 0:
        raise AdapterError(f"{path}: softprompt_entry_layer must be an integer >= 0, got {shown(entry)}")
    if peft_type == PROMPT_TUNING:
        return
    layers, heads = values.get("num_layers"), values.get("num_attention_heads")
    if layers is None or entry >= layers:
        raise AdapterError(f"{path}: num_layers ({shown(layers)}) must be given and above the entry layer {entry}")
    if peft_type == LATE and (entry == 0 or not _positive_int(values.get("softprompt_hidden_size"))):
        raise AdapterError(f"{path}: a late prompt needs an entry layer above 0 and softprompt_hidden_size")
    if values["softprompt_form"] == Form.KV.value and (heads is None or values["token_dim"] % heads):
        raise AdapterError(
            f"{path}: token_dim {values['token_dim']} must split into num_attention_heads ({shown(heads)}) "
            "key/value heads"
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 24


def check_compatible(
    base: FrozenModel,
    config: AdapterConfig,
    where: Path,
    allow_mismatch: bool,
    hint: str = "; pass --allow-base-mismatch to load it anyway",
) -> None:
    """Refuse an adapter trained for another base model; a fingerprint mismatch can be overridden (``hint``)."""
    trained_on = f"it was trained on a different model ({config.base_model_name_or_path})"
    vectors_width = config.token_dim if config.form is Form.VECTORS else config.softprompt_hidden_size
    if vectors_width is not None and vectors_width != base.hidden_size:
        raise BaseModelMismatchError(
            f"adapter {where} has token_dim {vectors_width}, but base model {base.name!r} has hidden size "
            f"{base.hidden_size}: {trained_on}"
        )
    if config.peft_type != PROMPT_TUNING and config.num_layers != base.num_layers:
        raise BaseModelMismatchError(
            f"adapter {where} is for a model of {config.num_layers} layers, but {base.name!r} has "
            f"{base.num_layers}: {trained_on}"
        )
    heads, dim = base.kv_shape
    if config.form is Form.KV and (config.num_attention_heads, config.token_dim) != (heads, heads * dim):
        raise BaseModelMismatchError(
            f"adapter {where} holds keys/values of {config.num_attention_heads} heads x "
            f"{config.token_dim // max(config.num_attention_heads or 1, 1)} per layer, but {base.name!r} caches "
            f"{heads} heads x {dim}: {trained_on}"
        )
    expected = config.softprompt_base_fingerprint
    if expected is None or expected == base.fingerprint:
        return
    message = (
        f"adapter {where} was trained on base model {config.base_model_name_or_path!r} "
        f"(fingerprint {expected}), but {base.name!r} has fingerprint {base.fingerprint}"
    )
    if not allow_mismatch:
        raise BaseModelMismatchError(message + hint)
    log.warning("%s; loading anyway as asked", message)
