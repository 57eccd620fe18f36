"""Request bodies of the OpenAI-compatible API, validated by pydantic; unknown fields are ignored.

Types and ranges are checked here; what depends on several fields, on the model or on the
server's limits (``echo`` with ``max_tokens: 0``, token ids inside the vocabulary, options the
engine cannot honour such as penalties, ``logit_bias``, ``suffix`` or ``best_of`` other than
``n``) is checked in :mod:`softprompt.inference.serve.plan`, so that every refusal is a 400 whose
``param`` names the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from softprompt.inference.engine.sequence import MAX_LOGPROBS, SEEDS

MAX_STOPS = 4
MAX_N = 16  # choices per prompt; each one is a sequence and takes a concurrency slot

TokenIds = Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's range and default; 0: greedy, as everywhere
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: dict | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(default=None, ge=SEEDS.start, lt=SEEDS.stop)
    presence_penalty: float = 0.0  # only 0 (checked in plan.py, with the other unsupported values)
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None  # only empty
    user: StrictStr | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings; an empty one is dropped (the engine's ``Sampling`` refuses it, since it would
        cut every completion to nothing, but a request that sends one has always been answered)."""
        if self.stop is None:
            return ()
        return tuple(s for s in ((self.stop,) if isinstance(self.stop, str) else self.stop) if s)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def top_logprobs_asked(self) -> int | None:
        """Alternatives per token to report; None: no log-probabilities at all."""
        raise NotImplementedError


class CompletionRequest(_Request):
    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(min_length=1)
    # 0 only with echo: score the prompt without generating (lm-evaluation-harness's loglikelihood).
    max_tokens: StrictInt | None = Field(default=None, ge=0)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: StrictInt | None = None  # only equal to n
    suffix: StrictStr | None = None  # only empty

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """Strings, or token-id lists: a single string or id list becomes a list of one."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[return-value]

    @property
    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # needs logprobs: true

    @property
    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    path: StrictStr | None = Field(
        default=None,
        max_length=MAX_PATH_CHARS,
        description="directory under the adapters root (default: the name)",
    )

    @field_validator("path")
    @classmethod
    def _usable_path(cls, value: str | None) -> str | None:
        """What no filesystem call takes (a NUL byte, a lone surrogate) is refused here, not failed on."""
        if value is not None:
            if "\x00" in value:
                raise ValueError("the path holds a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the path is not valid Unicode (a lone surrogate)") from None
        return value
