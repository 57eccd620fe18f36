"""Adapter registry: which soft prompts the engine can serve, and which are held in memory.

Every adapter is known by a validated name and, when it came from disk, its directory. Loaded
adapters (embedding plus prompt KV) are held in least-recently-used order under a byte bound;
an evicted adapter stays listed and is read back from disk on its next use. Names never reach
the filesystem unchecked: they must match ``NAME_PATTERN`` and any path must resolve inside the
registry's root directory. Adapters trained on another base model are refused.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.core.adapter import CONFIG_NAME, check_compatible, load_adapter
from softprompt.core.errors import AdapterError, AdapterNameError, ConfigError, SoftPromptError, UnknownAdapterError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.inference.engine.kv import PromptKV

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RegistryConfig:
    max_loaded_bytes: int = field(
        default=256 << 20, metadata={"help": "bytes of prompt embeddings + prompt KV held in memory (LRU beyond)"}
    )
    max_adapters: int = field(default=4096, metadata={"help": "most adapters the registry lists"})

    def __post_init__(self) -> None:
        if self.max_loaded_bytes < 1 or self.max_adapters < 1:
            raise ConfigError("max_loaded_bytes and max_adapters must be at least 1")


@dataclass
class RegistryStats:
    """Running counts for the server's metrics; changed only under the registry's lock."""

    hits: int = 0  # prompt KV served from memory
    misses: int = 0  # prompt KV computed: first use of an adapter, or its first use after an eviction
    loads: int = 0  # adapter files read from disk (adds and reloads after eviction)
    evictions: int = 0  # adapters dropped from memory by the byte bound


@dataclass
class Entry:
    name: str
    path: Path | None  # None: given in memory, so it can never be evicted
    num_virtual_tokens: int
    prompt: Prompt | None = None  # while loaded: vectors, or per-layer keys/values, at any entry layer
    kv: dict[str, PromptKV] = field(default_factory=dict)  # per dtype@device: every layer's keys/values, once

    @property
    def nbytes(self) -> int:
        held = 0 if self.prompt is None else self.prompt.nbytes
        return held + sum(kv.nbytes for kv in self.kv.values())

    def unload(self) -> None:
        self.prompt, self.kv = None, {}


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise AdapterNameError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


class AdapterRegistry:
    """Thread-safe: the server edits it while the engine thread reads prompt KV from it."""

    def __init__(self, base: FrozenModel, root: str | Path | None = None, config: RegistryConfig | None = None) -> None:
        self.base = base
        self.root = Path(root).resolve() if root is not None else None
        self.config = config or RegistryConfig()
        self._entries: dict[str, Entry] = {}
        self._loaded: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = RegistryStats()

    def scan(self) -> list[str]:
        """Add every adapter directory directly under the root; bad ones are logged and skipped."""
        if self.root is None or not self.root.is_dir():
            raise AdapterError(f"adapters directory not found: {self.root}")
        added = []
        for child in sorted(self.root.iterdir()):
            if not (child / CONFIG_NAME).is_file():
                continue
            try:
                self.add(child.name, child)
                added.append(child.name)
            except SoftPromptError as exc:
                log.warning("skipping adapter %s: %s", child, exc)
        return added

    def add(self, name: str, path: str | Path | None = None) -> None:
        """Load and check adapter ``name`` from ``path`` (default: ``root/name``), replacing any old one."""
        check_name(name)
        try:
            directory = self._confine(Path(path) if path is not None else None, name)
            adapter = load_adapter(directory)
        except SoftPromptError:
            raise
        except (OSError, ValueError) as exc:  # NUL, a lone surrogate, a name over 255 bytes, a symlink loop
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise AdapterError(f"adapter path {str(path)[:80]!r} cannot be read as a directory ({reason})") from exc
        check_compatible(self.base, adapter.config, directory, allow_mismatch=False)
        entry = Entry(name, directory, adapter.config.num_virtual_tokens, adapter.prompt)
        self._insert(entry)
        with self._lock:
            self.stats.loads += 1

    def add_embedding(self, name: str, prompt: Prompt) -> None:
        """Serve an in-memory prompt; pinned, with no file to reload it from."""
        check_name(name)
        if prompt.form is Form.VECTORS and prompt.weights.shape[1] != self.base.hidden_size:
            raise AdapterError(
                f"prompt {name!r} must be [tokens, {self.base.hidden_size}], got {tuple(prompt.weights.shape)}"
            )
        if prompt.entry >= self.base.num_layers:
            raise AdapterError(
                f"prompt {name!r} enters at layer {prompt.entry}, beyond the model's {self.base.num_layers}"
            )
        self._insert(Entry(name, None, prompt.num_virtual_tokens, prompt.detach().to("cpu")))

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._entries:
                raise UnknownAdapterError(f"unknown adapter {name!r}")
            del self._entries[name]
            self._loaded.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def loaded_names(self) -> list[str]:
        """Adapters held in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def num_virtual_tokens(self, name: str) -> int:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownAdapterError(f"unknown adapter {name!r}")
            return entry.num_virtual_tokens

    def path(self, name: str) -> Path | None:
        """The adapter's directory, where training left its card and metrics; None for an in-memory prompt."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownAdapterError(f"unknown adapter {name!r}")
            return entry.path

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def prompt_kv(self, name: str, key: str, compute: Callable[[Prompt], PromptKV]) -> PromptKV:
        """The adapter's prompt KV for ``key`` (dtype@device), computed on first use and then cached."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownAdapterError(f"unknown adapter {name!r}")
            if entry.prompt is None and entry.path is not None:
                entry.prompt = load_adapter(entry.path).prompt
                self.stats.loads += 1
            if key not in entry.kv:
                assert entry.prompt is not None  # pinned entries always hold their prompt
                entry.kv[key] = compute(entry.prompt)
                self.stats.misses += 1
            else:
                self.stats.hits += 1
            self._loaded[name] = entry
            self._loaded.move_to_end(name)
            self._evict(keep=name)
            return entry.kv[key]

    def _confine(self, path: Path | None, name: str) -> Path:
        if self.root is None:
            if path is None:
                raise AdapterError(f"adapter {name!r} needs a path: this registry has no adapters directory")
            return path
        candidate = (self.root / name) if path is None else (path if path.is_absolute() else self.root / path)
        resolved = candidate.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise AdapterError(f"adapter path {str(path)!r} is outside the adapters directory {self.root}")
        return resolved

    def _insert(self, entry: Entry) -> None:
        with self._lock:
            if entry.name not in self._entries and len(self._entries) >= self.config.max_adapters:
                raise AdapterError(f"registry is full ({self.config.max_adapters} adapters); remove one first")
            self._entries[entry.name] = entry
            self._loaded[entry.name] = entry
            self._loaded.move_to_end(entry.name)
            self._evict(keep=entry.name)

    def _evict(self, keep: str) -> None:
        total = sum(e.nbytes for e in self._loaded.values())
        for name in list(self._loaded):
            if total <= self.config.max_loaded_bytes:
                break
            entry = self._loaded[name]
            if name == keep or entry.path is None:
                continue
            total -= entry.nbytes
            entry.unload()
            del self._loaded[name]
            self.stats.evictions += 1
            log.debug("evicted adapter %s from memory", name)
