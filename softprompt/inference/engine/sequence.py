"""The request record passed between scheduler, engine and server; no torch here.

A :class:`Sequence` is the only thing the engine's parts share: the scheduler moves it between
queues, the engine appends sampled tokens and decides when it is finished, and the server reads
its text. Device state (cache rows, random generators) lives in the runner, keyed by ``seq_id``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from softprompt.core.config_types import check_types, shown
from softprompt.core.errors import ConfigError

_ids = itertools.count()

# Most alternatives a request may ask for per token (vLLM's default cap; OpenAI's chat API allows 20).
MAX_LOGPROBS = 20
MAX_TOKENS = 1 << 30  # token counts become int64 tensors; this bound keeps them far from overflow
SEEDS = range(-(1 << 63), 1 << 64)  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (raw logits: before temperature, top-p or penalties)
    and the ``k`` most likely tokens at that position, as (token id, log-probability) pairs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Sampling:
    """How each token is chosen and when a row stops: declared and checked once, here, for every way in.

    ``SamplingParams`` (one engine request) and ``GenerateConfig`` (``softprompt generate`` and
    ``generate()``) derive from it, and the server fills it from an OpenAI request, so a value means
    the same everywhere. Temperature 0 is greedy decoding, as in OpenAI's API (there is no separate
    switch to sample).
    """

    temperature: float = field(
        default=0.0, metadata={"help": "0: greedy decoding; above 0: sample at this temperature"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: all)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalty > 1 discourages repeats"})
    seed: int | None = field(default=None, metadata={"help": "seed for sampling (each request its own generator)"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end generation (not returned)"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop a row at the end-of-sequence token"})

    def __post_init__(self) -> None:
        check_types(self)  # JSON values too: NaN, strings for numbers; makes stop a tuple, ints floats
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ConfigError("top_k must be >= 0 and repetition_penalty > 0")
        if self.seed is not None and self.seed not in SEEDS:
            raise ConfigError(f"seed must be between -2**63 and 2**64 - 1, got {shown(self.seed)}")
        if any(not s for s in self.stop):  # "" is found at once: every completion would be cut to nothing
            raise ConfigError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SamplingParams(Sampling):
    """One engine request: its sampling, its token budget and the log-probabilities it asks for."""

    max_new_tokens: int = field(default=16, metadata={"help": "tokens to generate"})
    logprobs: int | None = field(
        default=None, metadata={"help": "record each sampled token's log-probability and this many alternatives"}
    )
    prompt_logprobs: int | None = field(
        default=None, metadata={"help": "likewise for every prompt token after the first (computed at prefill)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.max_new_tokens <= MAX_TOKENS:
            raise ConfigError(f"max_new_tokens must be between 1 and {MAX_TOKENS}, got {shown(self.max_new_tokens)}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ConfigError(f"{name} must be in 0..{MAX_LOGPROBS}, got {value}")


class Status(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request: prompt token ids, the adapter that conditions it, and what has been generated."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    virtual_tokens: int = 0  # the adapter's soft-prompt length
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded output, already cut at a stop string; grows at its end (see revisions)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str | None = None
    cause: Exception | None = None  # what raised ``error``, so callers decide by its type, never its text
    cancelled: bool = False  # set from any thread; the engine acts on it at its next step
    # Filled only when params ask: one entry per sampled token (a final end-of-sequence token
    # included, though it is not in output_ids), and one per prompt token after the first.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Times ``text`` changed other than at its end: only for tokenizers decoded in full after every
    # token whose decoding rewrites earlier text (see engine/detokenizer.py); a reader re-checks then.
    revisions: int = 0

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def finish(self, reason: str, error: str | None = None, cause: Exception | None = None) -> None:
        self.status, self.finish_reason, self.error, self.cause = Status.FINISHED, reason, error, cause

    def stream_end(self) -> int:
        """How much of ``text`` is safe to send now: not an incomplete UTF-8 character or a possible stop-string start.

        Its cost does not grow with the text (a streaming server asks after every token).
        """
        text, end = self.text, len(self.text)
        if self.finished:
            return end
        while end and text[end - 1] == "\ufffd":
            end -= 1
        hold = 0
        for stop in self.params.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if text.endswith(stop[:size], 0, end):
                    hold = max(hold, size)
                    break
        return end - hold


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one was found."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
