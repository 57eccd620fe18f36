"""The methods ``softprompt compare`` measures; a :class:`MethodSpec` is one setting of one method.

prompt engineering   zero-shot (instruction or not), k-shot in-context examples (nothing trained)
prompt tuning        a soft prompt [n, H] (Lester et al., 2021), optionally through a residual MLP
P-tuning             prompt tuning with the residual MLP always on, folded away on export
prefix tuning        a deep prompt: keys and values in every layer (Li & Liang, 2021; Liu et al., 2022,
                     P-tuning v2), initialised from the model's own keys/values of a text
late prompt          vectors or keys/values entering at a layer k > 0 (Liu et al., 2022, Late Prompt
                     Tuning), the frozen layers below k computed once per row
LoRA                 low-rank updates of attention weights (Hu et al., 2021), through peft
full fine-tuning     every weight of the base model

Every trained method runs through softprompt's one training loop (:mod:`softprompt.training`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form
from softprompt.core.prompt import Init


class Kind(str, Enum):
    ZERO_SHOT = "zero-shot"
    FEW_SHOT = "few-shot"
    PROMPT_TUNING = "prompt-tuning"
    P_TUNING = "p-tuning"
    PREFIX_TUNING = "prefix-tuning"
    LATE_PROMPT = "late-prompt"
    LORA = "lora"
    FULL = "full-ft"


PROMPTS = {Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT}  # soft prompts of some form
TRAINED = PROMPTS | {Kind.LORA, Kind.FULL}
FAMILY = {
    Kind.ZERO_SHOT: "prompt engineering",
    Kind.FEW_SHOT: "prompt engineering",
    Kind.PROMPT_TUNING: "prompt tuning",
    Kind.P_TUNING: "prompt tuning",
    Kind.PREFIX_TUNING: "prefix tuning",
    Kind.LATE_PROMPT: "late prompt",
    Kind.LORA: "LoRA",
    Kind.FULL: "full fine-tuning",
}


METHOD_NAMES = {
    Kind.ZERO_SHOT: "zero-shot",
    Kind.FEW_SHOT: "few-shot",
    Kind.PROMPT_TUNING: "prompt tuning",
    Kind.P_TUNING: "P-tuning",
    Kind.PREFIX_TUNING: "prefix tuning",
    Kind.LATE_PROMPT: "late prompt",
    Kind.LORA: "LoRA",
    Kind.FULL: "full fine-tuning",
}


@dataclass(frozen=True)
class MethodSpec:
    kind: Kind = field(metadata={"help": "which method"})
    lr: float = field(default=0.0, metadata={"help": "learning rate (trained methods)"})
    num_virtual_tokens: int = field(default=0, metadata={"help": "prompt / prefix length"})
    init: Init = field(default=Init.TEXT, metadata={"help": "prompt init: random, vocab, text, labels, library"})
    shots: int = field(default=0, metadata={"help": "in-context examples (few-shot)"})
    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    test_rows: int | None = field(default=None, metadata={"help": "evaluate on only the first N test rows"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule (trained methods)"})
    reparam_hidden: int = field(default=0, metadata={"help": "residual MLP width over the prompt (0: none)"})
    instruction: bool = field(
        default=True, metadata={"help": "put the preset's instruction first (prompt engineering)"}
    )
    order: int = field(default=0, metadata={"help": "which seeded order of the in-context examples (few-shot)"})
    form: Form = field(default=Form.VECTORS, metadata={"help": "late prompt: vectors or kv (keys/values per layer)"})
    depth: float = field(default=0.0, metadata={"help": "late prompt: entry layer as a fraction of the model's depth"})

    def __post_init__(self) -> None:
        for name, kind in (("kind", Kind), ("init", Init), ("form", Form)):  # as JSON or a search space gives them
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                shown = ", ".join(k.value for k in kind)
                raise ConfigError(f"{name} must be one of {shown}, got {getattr(self, name)!r}") from None
        if self.kind in TRAINED and not self.lr > 0:
            raise ConfigError(f"{self.kind.value} needs a positive learning rate")
        if self.kind in PROMPTS and self.num_virtual_tokens < 1:
            raise ConfigError(f"{self.kind.value} needs num_virtual_tokens >= 1")
        if self.kind is Kind.FEW_SHOT and self.shots < 1:
            raise ConfigError("few-shot needs shots >= 1")
        if self.reparam_hidden < 0 or self.order < 0:
            raise ConfigError("reparam_hidden and order must be >= 0")
        if self.kind is Kind.LATE_PROMPT and not 0 < self.depth < 1:
            raise ConfigError(f"a late prompt enters inside the model: depth must be in (0, 1), got {self.depth}")

    def entry_layer(self, layers: int) -> int:
        """The layer a late prompt enters at in a model of ``layers`` layers (0 for every other method)."""
        if self.kind is not Kind.LATE_PROMPT:
            return 0
        return min(max(1, round(self.depth * layers)), layers - 1)

    @property
    def prompt_form(self) -> Form:
        """What the method trains: vectors, or keys/values in every layer from its entry up."""
        return Form.KV if self.kind is Kind.PREFIX_TUNING else self.form

    @property
    def method(self) -> str:
        """The method, whatever its settings: what compare reports a row for."""
        return METHOD_NAMES[self.kind]

    @property
    def settings(self) -> str:
        """The settings a search chooses among, in words."""
        if self.kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
            shown = ["instruction" if self.instruction else "no instruction"]
            if self.kind is Kind.FEW_SHOT:
                shown += [f"{self.shots} shots", f"order {self.order}"]
            return ", ".join(shown)
        shown = [f"lr {self.lr:g}", self.scheduler]
        if self.kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
            shown += [f"{self.init.value} init", f"{self.num_virtual_tokens} tokens"]
            if self.reparam_hidden:
                shown.append(f"MLP {self.reparam_hidden}")
        elif self.kind is Kind.PREFIX_TUNING:
            shown += [f"{self.init.value} init", f"{self.num_virtual_tokens} tokens"]
        elif self.kind is Kind.LATE_PROMPT:
            shown += [
                f"{self.form.value} at {self.depth:g} depth",
                f"{self.init.value} init",
                f"{self.num_virtual_tokens} tokens",
            ]
        elif self.kind is Kind.LORA:
            shown.append(f"rank {self.rank}")
        return ", ".join(shown)

    @property
    def name(self) -> str:
        if self.kind is Kind.FEW_SHOT:
            return f"{self.shots}-shot"
        if self.kind is Kind.ZERO_SHOT:
            return "zero-shot instruction"
        if self.kind is Kind.PROMPT_TUNING:
            return f"prompt tuning ({self.init.value}, {self.num_virtual_tokens})"
        if self.kind is Kind.P_TUNING:
            return f"P-tuning ({self.init.value}, {self.num_virtual_tokens})"
        if self.kind is Kind.PREFIX_TUNING:
            return f"prefix tuning ({self.init.value}, {self.num_virtual_tokens})"
        if self.kind is Kind.LATE_PROMPT:
            return f"late prompt ({self.form.value} at {self.depth:g}, {self.num_virtual_tokens})"
        if self.kind is Kind.LORA:
            return f"LoRA (r={self.rank})"
        return "full fine-tuning"
