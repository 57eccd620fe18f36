"""Turn a validated request into engine sequences: which adapter, which prompt tokens, which choices.

Everything a request can get wrong is found here, before any slot is taken or any sequence
queued, and answered with an :class:`APIError` whose ``param`` names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from softprompt.core.data import encode_input, encode_text
from softprompt.core.errors import AdapterError, ContextOverflowError, RequestError, UnknownAdapterError
from softprompt.inference.engine import Engine, SamplingParams, Sequence
from softprompt.inference.serve.config import ServeConfig
from softprompt.inference.serve.errors import APIError
from softprompt.inference.serve.schemas import ChatRequest, CompletionRequest

Request = CompletionRequest | ChatRequest
SEED_SPACE = 1 << 64  # torch seeds are taken modulo 2**64


@dataclass(frozen=True)
class Job:
    """A request as sequences: choice i is ``seqs[i]``, made from prompt ``i // n``."""

    seqs: list[Sequence]
    n: int
    prompt_tokens: int  # usage counts each prompt once, however many choices it has
    echo: list[str] | None  # per prompt, the text returned before its completions (``echo``)
    hide_generated: bool  # max_tokens 0 with echo: the one token generated only ran the prefill
    top_logprobs: int | None  # alternatives per token in the answer; None: no log-probabilities


class Planner:
    def __init__(self, engine: Engine, tokenizer: Any, config: ServeConfig, model_name: str) -> None:
        self.engine, self.tokenizer, self.config, self.model_name = engine, tokenizer, config, model_name
        self.vocab = int(engine.base.model.get_input_embeddings().weight.shape[0])  # type: ignore[index]

    def plan(self, request: Request) -> Job:
        _refuse_unsupported(request)
        adapter = self.adapter_for(request.model)
        max_new, hide = self._max_tokens(request)
        prompts, texts = self.encode(request)
        need = len(prompts) * request.n
        if need > self.config.max_concurrent:
            raise APIError(
                400,
                f"this request needs {need} sequences (prompts x n), more than the server runs at once "
                f"({self.config.max_concurrent})",
                param="n" if request.n > 1 else "prompt",
            )
        echo = isinstance(request, CompletionRequest) and request.echo
        top = request.top_logprobs_asked
        seqs = []
        for ids in prompts:
            for copy in range(request.n):
                params = SamplingParams(
                    max_new_tokens=max_new,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    seed=None if request.seed is None else (request.seed + copy) % SEED_SPACE,
                    stop=request.stops,
                    logprobs=top,
                    prompt_logprobs=top if echo else None,
                )
                seqs.append(self._sequence(ids, adapter, params))
        return Job(seqs, request.n, sum(map(len, prompts)), texts if echo else None, hide, top)

    def adapter_for(self, model: str) -> str | None:
        """The base model's name selects no adapter; any other name must be a registered adapter (else 404)."""
        if model == self.model_name:
            return None
        if model in self.engine.registry:
            return model
        raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")

    def encode(self, request: Request) -> tuple[list[list[int]], list[str]]:
        """Prompt token ids, and each prompt's text (what ``echo`` returns)."""
        try:
            return self._encode(request)
        except RequestError as exc:  # text the tokenizer cannot take (an unpaired surrogate)
            param = "prompt" if isinstance(request, CompletionRequest) else "messages"
            raise APIError(400, f"{param}: {exc}", param=param, code="invalid_value") from None

    def _encode(self, request: Request) -> tuple[list[list[int]], list[str]]:
        if isinstance(request, CompletionRequest):
            given = request.prompts
            if isinstance(given[0], str):
                texts = [str(t) for t in given]
                rows = [encode_input(self.tokenizer, text) for text in texts]
            else:
                rows = [self._checked_ids(ids, i) for i, ids in enumerate(given)]  # type: ignore[arg-type]
                texts = [str(self.tokenizer.decode(ids)) for ids in rows] if request.echo else [""] * len(rows)
            param = "prompt"
        else:
            if self.tokenizer.chat_template is None:
                raise APIError(400, f"model {self.model_name!r} has no chat template; use /v1/completions")
            messages = [{"role": m.role, "content": m.text} for m in request.messages]
            text = str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            rows, texts = [encode_text(self.tokenizer, text)], [text]  # the template writes its own start tokens
            param = "messages"
        for ids in rows:
            if len(ids) > self.config.max_prompt_tokens:
                raise APIError(
                    400,
                    f"the prompt has {len(ids)} tokens, more than the limit of {self.config.max_prompt_tokens}",
                    param=param,
                    code="context_length_exceeded",
                )
        return rows, texts

    def _checked_ids(self, ids: list[int], row: int) -> list[int]:
        for i, token in enumerate(ids):
            if not 0 <= token < self.vocab:
                raise APIError(
                    400,
                    f"prompt[{row}][{i}]: token id {token} is outside the model's vocabulary (0..{self.vocab - 1})",
                    param="prompt",
                    code="invalid_value",
                )
        return list(ids)

    def _max_tokens(self, request: Request) -> tuple[int, bool]:
        """Tokens to generate, and whether the answer hides them (max_tokens 0 with echo)."""
        asked = request.max_tokens
        if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
            asked = request.max_completion_tokens
        if asked is not None and asked > self.config.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {asked}, more than the limit of {self.config.max_tokens}",
                "max_tokens",
                "max_tokens",
            )
        if asked == 0:
            if not (isinstance(request, CompletionRequest) and request.echo):
                raise APIError(400, "max_tokens: 0 needs echo: true (it returns the prompt, scored)", "max_tokens")
            return 1, True
        return asked or self.config.default_max_tokens, False

    def _sequence(self, ids: list[int], adapter: str | None, params: SamplingParams) -> Sequence:
        try:
            return self.engine.make_request(ids, adapter, params)
        except UnknownAdapterError as exc:  # unloaded between the name check and now
            raise APIError(404, str(exc), param="model", code="model_not_found") from exc
        except ContextOverflowError as exc:
            raise APIError(400, str(exc), "max_tokens", "context_length_exceeded") from exc
        except (AdapterError, RequestError) as exc:  # an empty prompt
            raise APIError(400, str(exc), "prompt") from exc


def _refuse_unsupported(request: Request) -> None:
    """Options the engine cannot honour: a 400 naming the field, never a silent drop."""
    refusals = [
        (request.presence_penalty != 0, "presence_penalty", "presence_penalty is not supported; send 0 or omit it"),
        (request.frequency_penalty != 0, "frequency_penalty", "frequency_penalty is not supported; send 0 or omit it"),
        (bool(request.logit_bias), "logit_bias", "logit_bias is not supported; send {} or omit it"),
    ]
    if isinstance(request, CompletionRequest):
        refusals += [
            (bool(request.suffix), "suffix", "suffix (insertion) is not supported"),
            (
                request.best_of not in (None, request.n),
                "best_of",
                "best_of other than n is not supported (choices are not ranked)",
            ),
        ]
    else:
        refusals.append(
            (
                request.top_logprobs is not None and not request.logprobs,
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )
        )
    for refused, param, message in refusals:
        if refused:
            raise APIError(400, message, param=param, code="unsupported_value")
