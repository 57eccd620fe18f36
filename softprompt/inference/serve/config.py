"""Server options; each field is also a ``softprompt serve`` flag."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from softprompt.core.errors import ConfigError
from softprompt.inference.engine.sequence import MAX_TOKENS

API_KEY_ENV = "SOFTPROMPT_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (loopback by default)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    max_concurrent: int = field(
        default=64, metadata={"help": "requests in flight at once (each prompt counts); more get HTTP 429"}
    )
    max_tokens: int = field(default=1024, metadata={"help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when a request sets none"})
    max_prompt_tokens: int = field(default=4096, metadata={"help": "longest prompt accepted, in tokens"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body; more get HTTP 413"})
    served_model_name: str | None = field(
        default=None, metadata={"help": "model id of the base model in the API (default: the --model value)"}
    )
    # repr=False: the key must never reach a log line, a traceback or an error message.
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": f"require 'Authorization: Bearer KEY' on every /v1 route (default: ${API_KEY_ENV}; "
            "prefer the variable, since other users can read command lines)"
        },
    )
    enable_adapter_admin: bool = field(
        default=False,
        metadata={
            "help": "enable POST /v1/adapters and DELETE /v1/adapters/NAME (off by default; needs --api-key "
            "unless the host is loopback)"
        },
    )
    drain_seconds: float = field(
        default=20.0,
        metadata={"help": "on SIGTERM/SIGINT, how long in-flight requests may run on before they are ended"},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_concurrent", "max_tokens", "default_max_tokens", "max_prompt_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens > MAX_TOKENS:
            raise ConfigError(f"max_tokens must be at most {MAX_TOKENS}, got {self.max_tokens}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError("default_max_tokens cannot exceed max_tokens")
        if not (math.isfinite(self.drain_seconds) and self.drain_seconds >= 0):
            raise ConfigError(f"drain_seconds must be a finite number >= 0, got {self.drain_seconds}")
        if self.api_key is not None and not _usable_key(self.api_key):
            # The message never shows the key.
            raise ConfigError("api_key must be non-empty printable ASCII without spaces (it is sent as a header)")
        if self.enable_adapter_admin and self.api_key is None and not is_loopback(self.host):
            raise ConfigError(
                f"--enable-adapter-admin on {self.host!r} without --api-key (or ${API_KEY_ENV}) would let anyone "
                "who reaches the port load and unload adapters; set a key, or listen on 127.0.0.1"
            )

    def warnings(self) -> list[str]:
        """Risky but allowed settings, logged when the server starts."""
        out = []
        if self.api_key is None and not is_loopback(self.host):
            out.append(f"listening on {self.host} without --api-key: anyone who reaches the port can use the API")
        if self.enable_adapter_admin and self.api_key is None:
            out.append("adapter admin is on without --api-key: any local process can load and unload adapters")
        return out


def is_loopback(host: str) -> bool:
    """Only addresses that cannot be reached from another machine count; names other than localhost do not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _usable_key(key: str) -> bool:
    return bool(key) and key.isascii() and key.isprintable() and " " not in key
