"""What the routes do, apart from HTTP: resolve the model, check limits, encode, run, format.

Handlers tokenize on the event loop while the engine thread decodes, so the service keeps its
own copy of the tokenizer (fast tokenizers are not safe to share across threads).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator

from softprompt.core.errors import AdapterError, RequestError
from softprompt.inference.engine import Engine, SamplingParams, Sequence
from softprompt.inference.serve.config import ServeConfig
from softprompt.inference.serve.details import adapter_details
from softprompt.inference.serve.errors import APIError, error_body
from softprompt.inference.serve.formats import Format, model_card, public_reason, sse
from softprompt.inference.serve.schemas import ChatRequest, CompletionRequest
from softprompt.inference.serve.worker import EngineWorker, Slots, Snapshot


class Service:
    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.worker = EngineWorker(engine, config.max_concurrent)
        self.tokenizer = copy.deepcopy(engine.base.tokenizer)
        self.model_name = config.served_model_name or engine.base.name
        self.created = int(time.time())

    def models(self) -> dict:
        cards = [model_card(self.model_name, self.created)]
        cards += [model_card(n, self.created, self.model_name) for n in self.engine.registry.names()]
        return {"object": "list", "data": cards}

    def adapter(self, name: str) -> dict:
        """One adapter as the playground shows it: its card data, metrics and training records."""
        registry = self.engine.registry
        try:
            directory, tokens = registry.path(name), registry.num_virtual_tokens(name)
        except AdapterError as exc:  # unknown, or removed a moment ago
            raise APIError(404, f"the adapter {name!r} does not exist", param="name", code="model_not_found") from exc
        card = model_card(name, self.created, self.model_name)
        return {**card, "object": "adapter", "num_virtual_tokens": tokens, **adapter_details(directory)}

    def adapter_for(self, model: str) -> str | None:
        """The base model's name selects no adapter; any other name must be a registered adapter (else 404)."""
        if model == self.model_name:
            return None
        if model in self.engine.registry:
            return model
        raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")

    def encode(self, request: CompletionRequest | ChatRequest) -> list[list[int]]:
        if isinstance(request, CompletionRequest):
            rows = [list(self.tokenizer(text)["input_ids"]) for text in request.prompts]
            param = "prompt"
        else:
            if self.tokenizer.chat_template is None:
                raise APIError(400, f"model {self.model_name!r} has no chat template; use /v1/completions")
            messages = [{"role": m.role, "content": m.text} for m in request.messages]
            text = str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            rows = [list(self.tokenizer(text, add_special_tokens=False)["input_ids"])]
            param = "messages"
        for ids in rows:
            if len(ids) > self.config.max_prompt_tokens:
                raise APIError(
                    400,
                    f"the prompt has {len(ids)} tokens, more than the limit of {self.config.max_prompt_tokens}",
                    param=param,
                    code="context_length_exceeded",
                )
        return rows

    def params(self, request: CompletionRequest | ChatRequest) -> SamplingParams:
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
        return SamplingParams(
            max_new_tokens=asked or self.config.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=request.stops,
        )

    def sequences(self, request: CompletionRequest | ChatRequest) -> tuple[list[Sequence], Slots]:
        """Validate everything, then take slots (429 when full) for the request's sequences."""
        adapter = self.adapter_for(request.model)
        params = self.params(request)
        rows = self.encode(request)
        if request.stream and len(rows) > 1:
            raise APIError(400, "stream: true takes a single prompt", param="prompt")
        try:
            seqs = [self.engine.make_request(ids, adapter, params) for ids in rows]
        except RequestError as exc:  # empty prompt, or prompt + soft prompt + max_tokens over the context
            over = "context" in str(exc)
            raise APIError(
                400, str(exc), "max_tokens" if over else "prompt", "context_length_exceeded" if over else None
            ) from exc
        return seqs, self.worker.acquire(len(seqs))

    async def complete(self, request: CompletionRequest | ChatRequest, chat: bool) -> dict:
        seqs, slots = self.sequences(request)
        try:
            finals = await asyncio.gather(*(self._last(seq) for seq in seqs))
        finally:
            slots.release()
        for snap in finals:
            if snap.error is not None:
                raise APIError(500, snap.error, code="generation_failed")
        prompt_tokens = sum(len(s.prompt_ids) for s in seqs)
        completion_tokens = sum(s.completion_tokens for s in finals)
        return Format(chat, request.model).body(
            [s.text for s in finals], [public_reason(s.finish_reason) for s in finals], prompt_tokens, completion_tokens
        )

    async def _last(self, seq: Sequence) -> Snapshot:
        last = None
        async for snapshot in self.worker.stream(seq):
            last = snapshot
        if last is None:
            raise APIError(500, "generation ended without a result")
        return last

    async def stream(
        self, seq: Sequence, slots: Slots, request: CompletionRequest | ChatRequest, chat: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: text deltas, a final chunk with finish_reason, optional usage, ``[DONE]``.

        Leaving this generator early (client gone) closes the engine stream, which cancels the
        sequence, and gives the slot back.
        """
        fmt = Format(chat, request.model)
        updates = self.worker.stream(seq)
        sent, count = "", 0
        try:
            if chat:
                yield sse(fmt.chunk(None, None, first=True))
            async for snap in updates:
                if snap.error is not None:
                    yield sse(error_body(500, snap.error, code="generation_failed"))
                    break
                delta = snap.text[len(sent) :] if snap.text.startswith(sent) else ""
                sent, count = sent + delta, snap.completion_tokens
                reason = public_reason(snap.finish_reason) if snap.finish_reason else None
                if delta or reason:
                    yield sse(fmt.chunk(delta, reason))
            if request.include_usage:
                yield sse(fmt.usage_chunk(len(seq.prompt_ids), count))
            yield sse("[DONE]")
        finally:
            await updates.aclose()
            slots.release()
