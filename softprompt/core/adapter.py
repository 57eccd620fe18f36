"""Adapter files in PEFT's on-disk format, so PEFT and softprompt read each other's prompts.

A directory holds ``adapter_config.json`` (PEFT's PromptTuningConfig keys plus our own
``softprompt_*`` keys, which PEFT ignores) and ``adapter_model.safetensors`` with one fp32
tensor ``prompt_embeddings`` [num_virtual_tokens, hidden]. Loading never unpickles: a
``.bin`` adapter is refused. Both files are written in full to temp files beside their targets
and only then renamed into place, weights first and config last, so a failed save leaves the old
adapter untouched and no temp files behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from softprompt.core.base import BaseModel
from softprompt.core.checks import shown
from softprompt.core.errors import AdapterError, BaseModelMismatchError

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TENSOR_KEY = "prompt_embeddings"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class AdapterConfig:
    """What ``adapter_config.json`` says; field names are PEFT's, ours carry a prefix."""

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

    def to_json(self) -> dict[str, Any]:
        peft_keys = {
            "peft_type": "PROMPT_TUNING",
            "task_type": "CAUSAL_LM",
            "num_transformer_submodules": 1,
            "inference_mode": True,
            "revision": None,
            "tokenizer_kwargs": None,
            "modules_to_save": None,
        }
        return {**peft_keys, **asdict(self)}


@dataclass
class Adapter:
    embedding: torch.Tensor  # [num_virtual_tokens, hidden], fp32, cpu
    config: AdapterConfig


def save_adapter(directory: str | Path, embedding: torch.Tensor, config: AdapterConfig) -> Path:
    directory = Path(directory)
    tensor = embedding.detach().to("cpu", torch.float32).contiguous()
    if tuple(tensor.shape) != (config.num_virtual_tokens, config.token_dim):
        raise AdapterError(
            f"prompt shape {tuple(tensor.shape)} disagrees with its config "
            f"({config.num_virtual_tokens}, {config.token_dim})"
        )
    text = _json_text(config.to_json())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_paths(directory / WEIGHTS_NAME, directory / CONFIG_NAME) as (weights_tmp, config_tmp):
            save_file({TENSOR_KEY: tensor}, str(weights_tmp), metadata={"format": "pt"})
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
    embedding = _read_tensor(weights)
    if tuple(embedding.shape) != (config.num_virtual_tokens, config.token_dim):
        raise AdapterError(
            f"{weights}: {TENSOR_KEY} has shape {tuple(embedding.shape)}, but {CONFIG_NAME} says "
            f"({config.num_virtual_tokens}, {config.token_dim})"
        )
    return Adapter(embedding=embedding, config=config)


def _read_tensor(path: Path) -> torch.Tensor:
    # Only the prompt tensor is read: other tensors in the file (however large) stay on disk.
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            tensor = handle.get_tensor(TENSOR_KEY) if TENSOR_KEY in names else None
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterError(f"{path} is not a readable safetensors file: {exc}") from exc
    if tensor is None:
        raise AdapterError(f"{path} has no tensor {TENSOR_KEY!r} (found: {shown(names) if names else 'none'})")
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise AdapterError(f"{path}: {TENSOR_KEY} must be a 2-D float tensor, got {tensor.dtype} {tuple(tensor.shape)}")
    tensor = tensor.float()  # check after the cast: a float64 1e300 becomes inf in float32
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterError(f"{path}: {TENSOR_KEY} contains NaN or infinite values (as float32)")
    return tensor


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
    if peft_type != "PROMPT_TUNING":
        raise AdapterError(f"{path}: peft_type is {shown(peft_type)}; softprompt loads PROMPT_TUNING adapters")
    if raw.get("num_transformer_submodules", 1) not in (1, None):
        raise AdapterError(f"{path}: num_transformer_submodules must be 1 for a causal LM")
    known = AdapterConfig.__dataclass_fields__
    values = {k: v for k, v in raw.items() if k in known}
    for key in ("num_virtual_tokens", "token_dim"):
        if not _positive_int(values.get(key)):
            raise AdapterError(f"{path}: {key} must be a positive integer, got {shown(values.get(key))}")
    for key in ("num_layers", "num_attention_heads"):
        if values.get(key) is not None and not _positive_int(values[key]):
            values[key] = None
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


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 24


def write_json(path: Path, payload: Any) -> None:
    """Atomically write JSON; non-finite floats become null so every reader can parse it."""
    text = _json_text(payload)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_text(payload: Any) -> str:
    return json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds."""
    with atomic_paths(target) as (tmp,):
        yield tmp


def _new_temp_file(target: Path) -> Path:
    """Create an empty temp file beside ``target`` with the mode a plain ``open`` would give.

    ``tempfile.mkstemp`` creates files 0600, which made every adapter and report unreadable to
    the other users of a shared machine (a server running under its own account, say).
    """
    while True:
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_paths(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """Yield temp paths beside ``targets``; if the block succeeds, sync all, then rename each in order.

    Nothing is renamed until every file is complete, so a failure while writing leaves all
    targets as they were; the temp files are removed whatever happens.
    """
    tmps: list[Path] = []
    try:
        for target in targets:
            tmps.append(_new_temp_file(target))
        modes = [stat.S_IMODE(tmp.stat().st_mode) for tmp in tmps]
        yield tuple(tmps)
        for tmp, mode in zip(tmps, modes):
            os.chmod(tmp, mode)  # writers that replace the file (safetensors does) leave it 0600
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def check_compatible(base: BaseModel, config: AdapterConfig, where: Path, allow_mismatch: bool) -> None:
    """Refuse an adapter trained for another base model; a fingerprint mismatch can be overridden."""
    if config.token_dim != base.hidden_size:
        raise BaseModelMismatchError(
            f"adapter {where} has token_dim {config.token_dim}, but base model {base.name!r} has hidden size "
            f"{base.hidden_size}: it was trained on a different model ({config.base_model_name_or_path})"
        )
    expected = config.softprompt_base_fingerprint
    if expected is None or expected == base.fingerprint:
        return
    message = (
        f"adapter {where} was trained on base model {config.base_model_name_or_path!r} "
        f"(fingerprint {expected}), but {base.name!r} has fingerprint {base.fingerprint}"
    )
    if not allow_mismatch:
        raise BaseModelMismatchError(message + "; pass --allow-base-mismatch to load it anyway")
    log.warning("%s; loading anyway as asked", message)
