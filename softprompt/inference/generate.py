"""Text generation with soft prompts: a thin front end over :mod:`softprompt.inference.engine`.

Owning the decode loop (instead of patching ``model.generate``) is what keeps virtual tokens
correct: each prompt's keys/values are computed once and placed before its row's tokens, and
every decode step feeds one token per row with the next position id. Rows may use different
prompts, so one batch can serve several tasks. There is one decode loop, the engine's, and one
set of sampling options, the engine's :class:`Sampling`: :class:`GenerateConfig` derives from it
and adds only what a one-off call needs (a budget per prompt, the chat template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.config_types import shown
from softprompt.core.data import encode_input, encode_text
from softprompt.core.errors import ConfigError, RequestError
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.inference.engine import Engine, EngineConfig, Sampling, SamplingParams
from softprompt.inference.engine.sequence import MAX_TOKENS


@dataclass(frozen=True)
class GenerateConfig(Sampling):
    """A one-off generation: the engine's sampling (temperature 0 is greedy), a budget per prompt, the template."""

    max_new_tokens: int | None = field(default=64, metadata={"help": "tokens to generate per prompt"})
    max_length: int | None = field(
        default=None, metadata={"help": "cap on input + generated tokens (virtual tokens not counted)"}
    )
    chat_template: bool = field(default=False, metadata={"help": "wrap each prompt in the tokenizer's chat template"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens is None and self.max_length is None:
            raise ConfigError("set max_new_tokens or max_length")
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_TOKENS:
                raise ConfigError(f"{name} must be between 1 and {MAX_TOKENS}, got {shown(value)}")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"


def generate(
    base: FrozenModel,
    texts: Sequence[str],
    prompts: Sequence[Prompt | None] | Prompt | None = None,
    config: GenerateConfig | None = None,
) -> list[str]:
    """Continuations of ``texts``: ``prompts`` gives each row its soft prompt (any form), or one for all, or none."""
    if prompts is None or isinstance(prompts, Prompt):
        prompts = [prompts] * len(texts)
    return [c.text for c in complete(base, texts, prompts, config or GenerateConfig())]


def format_inputs(base: FrozenModel, texts: Sequence[str], chat_template: bool) -> list[str]:
    if not chat_template:
        return list(texts)
    if base.tokenizer.chat_template is None:
        raise ConfigError(f"model {base.name!r} has no chat template; drop the chat-template option")
    return [
        str(
            base.tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
        )
        for t in texts
    ]


def complete(
    base: FrozenModel,
    texts: Sequence[str],
    prompts: Sequence[Prompt | None],
    config: GenerateConfig,
) -> list[Completion]:
    """Generate for each text with its own prompt (or None), through the one engine decode loop."""
    if len(prompts) != len(texts):
        raise RequestError(f"got {len(prompts)} prompts for {len(texts)} texts")
    if not texts:
        return []
    if not all(isinstance(t, str) for t in texts):
        raise RequestError("every prompt must be a string")
    _check_finite(prompts)
    engine = Engine(base, config=EngineConfig(max_batch_size=max(1, len(texts)), max_context=1 << 30))
    names: dict[int, str] = {}  # one registry entry per distinct prompt tensor
    for prompt in prompts:
        if prompt is not None and id(prompt) not in names:
            names[id(prompt)] = f"prompt-{len(names)}"
            engine.registry.add_embedding(names[id(prompt)], prompt)
    tokenizer = base.tokenizer
    encoded = []
    for row, text in enumerate(format_inputs(base, texts, config.chat_template)):
        try:
            encoded.append(encode_prompt(tokenizer, text, config.chat_template))
        except RequestError as exc:
            raise RequestError(f"prompt {row + 1}: {exc}") from None
    for row, ids in enumerate(encoded):
        if not ids:  # nothing to condition on, and no last token to decode from
            raise RequestError(f"prompt {row + 1} is empty: it has no tokens")
    seqs = [
        engine.add_request(list(ids), None if p is None else names[id(p)], _params(config, len(ids)))
        for ids, p in zip(encoded, prompts)
    ]
    engine.run(seqs)
    return [Completion(s.text, list(s.output_ids), len(s.prompt_ids), s.finish_reason or "length") for s in seqs]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat_template: bool) -> list[int]:
    """A prompt's ids: the tokenizer's start tokens first, unless the chat template already wrote them."""
    return encode_text(tokenizer, text) if chat_template else encode_input(tokenizer, text)


def _check_finite(prompts: Sequence[Prompt | None]) -> None:
    """Refuse NaN/inf soft prompts; each distinct prompt is checked once (batches often repeat one)."""
    checked: set[int] = set()
    for row, prompt in enumerate(prompts):
        if prompt is None or id(prompt) in checked:
            continue
        checked.add(id(prompt))
        if not all(bool(torch.isfinite(t).all()) for t in (prompt.weights, prompt.below) if t is not None):
            raise RequestError(f"soft prompt for row {row + 1} contains NaN or infinite values")


def _params(config: GenerateConfig, prompt_tokens: int) -> SamplingParams:
    """Per-row sampling parameters; max_length counts each row's own tokens, so batching changes nothing."""
    budget = config.max_new_tokens or MAX_TOKENS
    if config.max_length is not None:
        budget = min(budget, max(1, config.max_length - prompt_tokens))
    return SamplingParams(max_new_tokens=budget, **{f.name: getattr(config, f.name) for f in fields(Sampling)})
