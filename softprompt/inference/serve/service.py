"""What the routes do, apart from HTTP: plan the request, take slots, run it, shape the answer.

Handlers tokenize on the event loop while the engine thread decodes, so the service keeps its
own copy of the tokenizer (fast tokenizers are not safe to share across threads).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator

from softprompt.core.errors import AdapterError, UnknownAdapterError
from softprompt.inference.engine import Engine, Sequence
from softprompt.inference.serve.choices import Choice, TokenTexts
from softprompt.inference.serve.config import ServeConfig
from softprompt.inference.serve.details import adapter_details
from softprompt.inference.serve.drain import REFUSAL, Drain
from softprompt.inference.serve.errors import APIError, error_body
from softprompt.inference.serve.formats import Format, model_card, sse
from softprompt.inference.serve.metrics import Metrics
from softprompt.inference.serve.plan import Job, Planner, Request
from softprompt.inference.serve.worker import EngineWorker, Slots, Snapshot


class Service:
    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.drain = Drain()
        self.metrics = Metrics(engine, self.drain)
        self.worker = EngineWorker(engine, config.max_concurrent, self.metrics)
        self.tokenizer = copy.deepcopy(engine.base.tokenizer)
        self.texts = TokenTexts(self.tokenizer)
        self.model_name = config.served_model_name or engine.base.name
        self.planner = Planner(engine, self.tokenizer, config, self.model_name)
        self.created = int(time.time())

    def models(self) -> dict:
        cards = [model_card(self.model_name, self.created)]
        cards += [model_card(n, self.created, self.model_name) for n in self.engine.registry.names()]
        return {"object": "list", "data": cards}

    def start(self, request: Request) -> tuple[Job, Slots]:
        """Validate everything, then take one slot per sequence (429 when full)."""
        if self.drain.draining:
            raise APIError(503, REFUSAL, code="server_shutting_down")
        job = self.planner.plan(request)
        return job, self.worker.acquire(len(job.seqs))

    def adapter(self, name: str) -> dict:
        """One adapter as the playground shows it: its card data, metrics and training records."""
        registry = self.engine.registry
        try:
            directory, tokens = registry.path(name), registry.num_virtual_tokens(name)
        except AdapterError as exc:  # unknown, or removed a moment ago
            raise APIError(404, f"the adapter {name!r} does not exist", param="name", code="model_not_found") from exc
        card = model_card(name, self.created, self.model_name)
        return {**card, "object": "adapter", "num_virtual_tokens": tokens, **adapter_details(directory)}

    async def shut_down(self) -> float:
        """Drain (see :mod:`softprompt.inference.serve.drain`); returns the seconds it took."""
        return await self.drain.run(self.config.drain_seconds, self.worker.abort)

    def failure(self, seq: Sequence, error: str) -> APIError:
        """The status a failed sequence's request gets: why it failed decides who is to blame."""
        if self.drain.ended_early:
            return APIError(503, error, code="server_shutting_down")
        # The registry raises UnknownAdapterError when the adapter went between this request's
        # checks and its prefill (it may be back by now, loaded again).
        gone = seq.adapter is not None and (
            seq.adapter not in self.engine.registry or isinstance(seq.cause, UnknownAdapterError)
        )
        if gone:
            message = f"the model {seq.adapter!r} was unloaded before this request ran"
            return APIError(404, message, param="model", code="model_not_found")
        return APIError(500, error, code="generation_failed")

    def _choices(self, job: Job, chat: bool) -> list[Choice]:
        echo = job.echo
        return [
            Choice(
                seq, self.texts, chat, job.top_logprobs, None if echo is None else echo[i // job.n], job.hide_generated
            )
            for i, seq in enumerate(job.seqs)
        ]

    async def complete(self, job: Job, slots: Slots, model: str, chat: bool) -> dict:
        finals: dict[int, Snapshot] = {}
        try:
            async for index, snap in self.worker.stream(job.seqs):
                if snap.finish_reason is not None:
                    finals[index] = snap
        finally:
            slots.release()
        for index, snap in sorted(finals.items()):
            if snap.error is not None:
                raise self.failure(job.seqs[index], snap.error)
        fmt = Format(chat, model)
        bodies = []
        for index, choice in enumerate(self._choices(job, chat)):
            delta = choice.advance(finals[index])
            bodies.append(fmt.choice(index, delta.text, delta.finish_reason, delta.logprobs))
        return fmt.body(bodies, job.prompt_tokens, _generated(job, finals))

    async def stream(self, job: Job, slots: Slots, model: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: deltas per choice, a chunk with each finish_reason, optional usage, ``[DONE]``.

        A failure (the drain deadline, an unloaded adapter, an engine error) ends the stream with an
        error event and then ``[DONE]``. Leaving this generator early (client gone) closes the engine
        stream, which cancels the sequences, and gives the slots back.
        """
        fmt = Format(chat, model)
        choices = self._choices(job, chat)
        updates = self.worker.stream(job.seqs)
        last: dict[int, Snapshot] = {}
        try:
            if chat:
                for index in range(len(job.seqs)):
                    yield sse(fmt.chunk(index, None, None, first=True))
            async for index, snap in updates:
                if snap.error is not None:
                    failure = self.failure(job.seqs[index], snap.error)
                    yield sse(error_body(failure.status, failure.message, failure.param, failure.code))
                    break
                last[index] = snap
                delta = choices[index].advance(snap)
                if delta.news:
                    yield sse(fmt.chunk(index, delta.text, delta.finish_reason, delta.logprobs))
            else:
                if include_usage:
                    yield sse(fmt.usage_chunk(job.prompt_tokens, _generated(job, last)))
            yield sse("[DONE]")
        finally:
            await updates.aclose()
            slots.release()


def _generated(job: Job, snaps: dict[int, Snapshot]) -> int:
    return 0 if job.hide_generated else sum(s.completion_tokens for s in snaps.values())
