"""The methods ``softprompt compare`` measures, one spec each, all trained by one loop (fit.py).

prompt engineering   zero-shot instruction, k-shot in-context examples (nothing trained)
prompt tuning        a soft prompt [n, H] (Lester et al., 2021), each init, a few lengths
P-tuning             the prompt produced by a residual MLP, folded away on export
prefix tuning        per-layer keys and values (Li & Liang, 2021), through peft
LoRA                 low-rank updates of attention weights (Hu et al., 2021), through peft
full fine-tuning     every weight of the base model
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from softprompt.core.errors import ConfigError


class Kind(str, Enum):
    ZERO_SHOT = "zero-shot"
    FEW_SHOT = "few-shot"
    PROMPT_TUNING = "prompt-tuning"
    P_TUNING = "p-tuning"
    PREFIX_TUNING = "prefix-tuning"
    LORA = "lora"
    FULL = "full-ft"


TRAINED = {Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING, Kind.LORA, Kind.FULL}
FAMILY = {
    Kind.ZERO_SHOT: "prompt engineering",
    Kind.FEW_SHOT: "prompt engineering",
    Kind.PROMPT_TUNING: "prompt tuning",
    Kind.P_TUNING: "prompt tuning",
    Kind.PREFIX_TUNING: "prefix tuning",
    Kind.LORA: "LoRA",
    Kind.FULL: "full fine-tuning",
}


@dataclass(frozen=True)
class MethodSpec:
    kind: Kind = field(metadata={"help": "which method"})
    lr: float = field(default=0.0, metadata={"help": "learning rate (trained methods)"})
    num_virtual_tokens: int = field(default=0, metadata={"help": "prompt / prefix length"})
    init: str = field(default="text", metadata={"help": "prompt init: random, vocab, text, labels"})
    shots: int = field(default=0, metadata={"help": "in-context examples (few-shot)"})
    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    test_rows: int | None = field(default=None, metadata={"help": "evaluate on only the first N test rows"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.kind in TRAINED and not self.lr > 0:
            raise ConfigError(f"{self.kind.value} needs a positive learning rate")
        if self.kind in (Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING) and self.num_virtual_tokens < 1:
            raise ConfigError(f"{self.kind.value} needs num_virtual_tokens >= 1")
        if self.kind is Kind.FEW_SHOT and self.shots < 1:
            raise ConfigError("few-shot needs shots >= 1")

    @property
    def name(self) -> str:
        if self.kind is Kind.FEW_SHOT:
            return f"{self.shots}-shot"
        if self.kind is Kind.ZERO_SHOT:
            return "zero-shot instruction"
        if self.kind is Kind.PROMPT_TUNING:
            return f"prompt tuning ({self.init}, {self.num_virtual_tokens})"
        if self.kind is Kind.P_TUNING:
            return f"P-tuning ({self.init}, {self.num_virtual_tokens})"
        if self.kind is Kind.PREFIX_TUNING:
            return f"prefix tuning ({self.num_virtual_tokens})"
        if self.kind is Kind.LORA:
            return f"LoRA (r={self.rank})"
        return "full fine-tuning"
