"""The engine's one config; no torch here, so the scheduler (policy only) reads its limits from it too.

What the loaded model decides (its position limit, a sliding window's span) is not configured:
the engine reads it off the model and hands it to the parts beside this config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.core.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = field(default=32, metadata={"help": "most sequences decoded together"})
    max_prefill_tokens: int = field(
        default=1024,
        metadata={
            "help": "most prompt tokens prefilled in one step (fewer: first tokens sooner, decoding paused less)"
        },
    )
    packed_weights: bool = field(
        default=True,
        metadata={
            "help": "CPU: run the frozen model's linear layers on oneDNN-prepacked weights (faster; their memory again)"
        },
    )
    max_context: int | None = field(
        default=None,
        metadata={"help": "cap on virtual + prompt + generated tokens (default: the model's position limit)"},
    )

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_prefill_tokens < 1:
            raise ConfigError("max_batch_size and max_prefill_tokens must be at least 1")
        if self.max_context is not None and self.max_context < 2:
            raise ConfigError(f"max_context must be at least 2, got {self.max_context}")
