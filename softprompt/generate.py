"""Text generation with soft prompts: our own KV-cached decode loop.

Owning the loop (instead of patching ``model.generate``) is what keeps virtual tokens correct:
they are injected once at prefill, after each row's left padding, and never again; every
decode step feeds one token per row with the next position id. Rows may use different
prompts, so one batch can serve several tasks. Sampling and repetition penalty reuse
transformers' logits processors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from softprompt.checks import check_types, shown
from softprompt.errors import ConfigError, RequestError
from softprompt.inject import inject
from softprompt.model import lm_logits, run_decoder
from softprompt.models import BaseModel

MAX_TOKENS = 1 << 30  # token counts become int64 tensors; this bound keeps them far from overflow


@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int | None = field(default=64, metadata={"help": "tokens to generate per prompt"})
    max_length: int | None = field(
        default=None, metadata={"help": "cap on input + generated tokens (virtual tokens not counted)"}
    )
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: all)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalty > 1 discourages repeats"})
    seed: int | None = field(default=None, metadata={"help": "seed for sampling"})
    chat_template: bool = field(default=False, metadata={"help": "wrap each prompt in the tokenizer's chat template"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop a row at the end-of-sequence token"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end generation"})

    def __post_init__(self) -> None:
        check_types(self)  # also makes stop a tuple and ints floats where floats are expected
        if self.max_new_tokens is None and self.max_length is None:
            raise ConfigError("set max_new_tokens or max_length")
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_TOKENS:
                raise ConfigError(f"{name} must be between 1 and {MAX_TOKENS}, got {shown(value)}")
        if self.seed is not None and not -(1 << 63) <= self.seed < 1 << 64:  # torch.Generator's range
            raise ConfigError(f"seed must be between -2**63 and 2**64 - 1, got {shown(self.seed)}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ConfigError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"


def generate(
    base: BaseModel,
    texts: Sequence[str],
    prompts: Sequence[torch.Tensor | None],
    config: GenerateConfig | None = None,
) -> list[str]:
    return [c.text for c in complete(base, texts, prompts, config or GenerateConfig())]


def format_inputs(base: BaseModel, texts: Sequence[str], chat_template: bool) -> list[str]:
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


@torch.no_grad()
def complete(
    base: BaseModel,
    texts: Sequence[str],
    prompts: Sequence[torch.Tensor | None],
    config: GenerateConfig,
) -> list[Completion]:
    if not texts:
        return []
    if not all(isinstance(t, str) for t in texts):
        raise RequestError("every prompt must be a string")
    _check_finite(prompts)
    tokenizer = base.tokenizer
    encoded = tokenizer(
        format_inputs(base, texts, config.chat_template),
        return_tensors="pt",
        padding=True,
        add_special_tokens=not config.chat_template,
    ).to(base.device)
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    if 0 in lengths:  # nothing to condition on, and no last token to decode from
        raise RequestError(f"prompt {lengths.index(0) + 1} is empty: it has no tokens")
    rows = decode(base, encoded["input_ids"], encoded["attention_mask"], prompts, config)
    return [
        _finish(str(tokenizer.decode(ids, skip_special_tokens=True)), ids, n, reason, config)
        for (ids, reason), n in zip(rows, lengths)
    ]


def _check_finite(prompts: Sequence[torch.Tensor | None]) -> None:
    """Refuse NaN/inf soft prompts; each distinct tensor is checked once (batches often repeat one)."""
    checked: set[int] = set()
    for row, prompt in enumerate(prompts):
        if prompt is None or id(prompt) in checked:
            continue
        checked.add(id(prompt))
        if not bool(torch.isfinite(prompt).all()):
            raise RequestError(f"soft prompt for row {row + 1} contains NaN or infinite values")


def _finish(text: str, ids: list[int], prompt_tokens: int, reason: str, config: GenerateConfig) -> Completion:
    cut = min((text.find(s) for s in config.stop if s in text), default=-1)
    if cut >= 0:
        return Completion(text[:cut], ids, prompt_tokens, "stop")
    return Completion(text, ids, prompt_tokens, reason)


def decode(
    base: BaseModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompts: Sequence[torch.Tensor | None],
    config: GenerateConfig,
) -> list[tuple[list[int], str]]:
    """Greedy or sampled decoding with a KV cache; returns (new token ids, finish reason) per row."""
    embed = base.model.get_input_embeddings()
    injected = inject(embed(input_ids), attention_mask, prompts)
    hidden, cache = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids, use_cache=True)
    mask, position = injected.attention_mask, injected.position_ids[:, -1]
    budget = _budgets(attention_mask, config)
    processors = _processors(config)
    generator = torch.Generator(base.device).manual_seed(config.seed) if config.seed is not None else None
    history = _history(input_ids, attention_mask)
    eos = base.tokenizer.eos_token_id if config.stop_at_eos else None
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=base.device)
    stopped = done.clone()
    for step in range(int(budget.max())):
        scores = processors(history, lm_logits(base, hidden[:, -1]).float())  # type: ignore[arg-type]
        token = _pick(scores, config, generator)
        for row in (~done).nonzero().flatten().tolist():
            out[row].append(int(token[row]))
        hit_eos = (token == eos) if eos is not None else torch.zeros_like(done)
        hit_stop = _stop_strings(base, out, config) & ~done
        stopped |= (hit_eos | hit_stop) & ~done
        done |= stopped | (step + 1 >= budget)
        if bool(done.all()):
            break
        history = torch.cat([history, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        hidden, cache = run_decoder(base, embed(token[:, None]), mask, position[:, None], cache, use_cache=True)
    eos_ids = {eos} if eos is not None else set()
    return [
        ([t for t in ids if t not in eos_ids], "stop" if bool(s) else "length") for ids, s in zip(out, stopped.tolist())
    ]


def _budgets(attention_mask: torch.Tensor, config: GenerateConfig) -> torch.Tensor:
    """New tokens allowed per row; max_length counts each row's own tokens, so batching changes nothing."""
    lengths = attention_mask.sum(dim=1)
    budget = torch.full_like(lengths, config.max_new_tokens or 1 << 30)
    if config.max_length is not None:
        budget = torch.minimum(budget, (config.max_length - lengths).clamp(min=1))
    return budget


def _history(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token ids for the repetition penalty, with padding replaced by a token the row already has.

    The penalty works on the set of ids in each row, so repeating a real token changes nothing,
    while leaving pad ids in would penalise the pad token in batched rows only.
    """
    first_real = (attention_mask.shape[1] - attention_mask.sum(dim=1)).clamp(max=attention_mask.shape[1] - 1)
    filler = input_ids.gather(1, first_real[:, None])
    return torch.where(attention_mask.bool(), input_ids, filler)


def _processors(config: GenerateConfig) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


def _pick(scores: torch.Tensor, config: GenerateConfig, generator: torch.Generator | None) -> torch.Tensor:
    greedy = scores.argmax(dim=-1)
    if not config.do_sample:
        return greedy
    probs = torch.softmax(scores, dim=-1)
    # A tiny temperature or repetition penalty pushes scores to inf and softmax gives NaN: such a
    # row takes its greedy token, the limit of sampling as the temperature goes to 0.
    finite = torch.isfinite(probs).all(dim=-1, keepdim=True)
    probs = torch.where(finite, probs, torch.nn.functional.one_hot(greedy, probs.shape[-1]).to(probs.dtype))
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _stop_strings(base: BaseModel, out: list[list[int]], config: GenerateConfig) -> torch.Tensor:
    hits = [bool(config.stop) and any(s in base.tokenizer.decode(ids[-16:]) for s in config.stop) for ids in out]
    return torch.tensor(hits, dtype=torch.bool, device=base.device)
