"""Server options; each field is also a ``softprompt serve`` flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.core.errors import ConfigError


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
    admin: bool = field(default=True, metadata={"help": "enable the adapter load/unload endpoints"})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_concurrent", "max_tokens", "default_max_tokens", "max_prompt_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError("default_max_tokens cannot exceed max_tokens")
