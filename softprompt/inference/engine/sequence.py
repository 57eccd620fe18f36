"""The request record passed between scheduler, engine and server; no torch here.

A :class:`Sequence` is the only thing the engine's parts share: the scheduler moves it between
queues, the engine appends sampled tokens and decides when it is finished, and the server reads
its text. Device state (cache rows, random generators) lives in the runner, keyed by ``seq_id``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from softprompt.core.errors import RequestError

_ids = itertools.count()

# Most alternatives a request may ask for per token (vLLM's default cap; OpenAI's chat API allows 20).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (raw logits: before temperature, top-p or penalties)
    and the ``k`` most likely tokens at that position, as (token id, log-probability) pairs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded; every row of a batch may differ."""

    max_new_tokens: int = field(default=16, metadata={"help": "tokens to generate"})
    temperature: float = field(default=0.0, metadata={"help": "0 for greedy decoding, else the sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: all)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalty > 1 discourages repeats"})
    seed: int | None = field(default=None, metadata={"help": "seed for this request's sampling"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end generation (not returned)"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop at the end-of-sequence token"})
    logprobs: int | None = field(
        default=None, metadata={"help": "record each sampled token's log-probability and this many alternatives"}
    )
    prompt_logprobs: int | None = field(
        default=None, metadata={"help": "likewise for every prompt token after the first (computed at prefill)"}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise RequestError("top_k must be >= 0 and repetition_penalty > 0")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise RequestError(f"{name} must be in 0..{MAX_LOGPROBS}, got {value}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


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
