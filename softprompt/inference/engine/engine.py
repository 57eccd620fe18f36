"""The engine: each ``step()`` is schedule -> run -> post-process, as in nano-vllm.

Requests may be added from any thread; they join the running batch at the next step (continuous
batching). A step either prefills newly admitted sequences (on top of their adapters' cached
prompt KV) or decodes one token for every running sequence, whatever adapter each one uses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence as Seq

from softprompt.core.data import encode_input
from softprompt.core.errors import (
    ContextOverflowError,
    RequestError,
    SoftPromptError,
    UnknownAdapterError,
)
from softprompt.core.frozen import FrozenModel
from softprompt.inference.engine.config import EngineConfig
from softprompt.inference.engine.detokenizer import Detokenizer, OutputText
from softprompt.inference.engine.gemm import prepack
from softprompt.inference.engine.kv import PromptKV
from softprompt.inference.engine.registry import AdapterRegistry
from softprompt.inference.engine.runner import ModelRunner
from softprompt.inference.engine.scheduler import Scheduler
from softprompt.inference.engine.sequence import SamplingParams, Sequence

# Context limit for models whose config names none (e.g. bloom, whose ALiBi has no fixed maximum).
DEFAULT_CONTEXT = 2048


class Engine:
    def __init__(self, base: FrozenModel, registry: AdapterRegistry | None = None, config: EngineConfig | None = None):
        self.base = base
        self.config = config or EngineConfig()
        self.registry = registry or AdapterRegistry(base)
        if self.config.packed_weights:
            prepack(base.model)
        self.runner = ModelRunner(base, self.config.max_batch_size)
        self.detokenizer = Detokenizer(base.tokenizer)
        span = base.family.max_span
        self.scheduler = Scheduler(self.config, span)
        self.max_context = min(self.config.max_context or _model_context(base), span or 1 << 62)
        self._live: dict[int, Sequence] = {}  # admitted, not yet released
        self._texts: dict[int, OutputText] = {}  # a live sequence's text as its tokens arrive
        self._inbox: list[Sequence] = []
        self._lock = threading.Lock()
        self.eos_id = base.tokenizer.eos_token_id

    def add_request(self, prompt_ids: list[int], adapter: str | None, params: SamplingParams) -> Sequence:
        """Queue one request (thread-safe); raises RequestError if it can never run."""
        return self.submit(self.make_request(prompt_ids, adapter, params))

    def make_request(self, prompt_ids: list[int], adapter: str | None, params: SamplingParams) -> Sequence:
        """Validate and build a sequence without queueing it, so a caller can watch it before it runs."""
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        if adapter is not None and adapter not in self.registry:
            raise UnknownAdapterError(f"unknown adapter {adapter!r}")
        total = len(prompt_ids) + params.max_new_tokens + self.virtual_tokens(adapter)
        if total > self.max_context:
            raise ContextOverflowError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) + soft prompt "
                f"({self.virtual_tokens(adapter)}) = {total} tokens exceeds the context limit of {self.max_context}"
                + _window_note(self.base)
            )
        return Sequence(list(prompt_ids), adapter, params, self.virtual_tokens(adapter))

    def submit(self, seq: Sequence) -> Sequence:
        with self._lock:
            self._inbox.append(seq)
        return seq

    def virtual_tokens(self, adapter: str | None) -> int:
        return 0 if adapter is None else self.registry.num_virtual_tokens(adapter)

    @staticmethod
    def cancel(seq: Sequence) -> None:
        """Ask the engine to drop ``seq`` at its next step (safe from any thread)."""
        seq.cancelled = True

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox) or self.scheduler.has_work

    def step(self) -> list[Sequence]:
        """Run one iteration; returns the sequences that gained tokens or finished."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for seq in inbox:
            self.scheduler.add(seq)
        changed = [s for s in self._all() if s.cancelled and not s.finished]
        for seq in changed:
            self._finish(seq, "cancelled")
        self._release()
        plan = self.scheduler.schedule()
        if plan.admit:
            changed += self._prefill(plan.admit)
        elif plan.decode:
            rows = self.runner.row_ids
            changed += self._append([self._live[i] for i in rows], self.runner.decode(self._live))
        self._release()
        return changed

    def abort_all(self, reason: str) -> list[Sequence]:
        """Finish every queued and running sequence with an error and drop the batch (after a failed step)."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
        hit = inbox + self._all()
        for seq in hit:
            if not seq.finished:
                self._finish(seq, "error", reason)
        self._release()
        return hit

    def _prefill(self, admitted: list[Sequence]) -> list[Sequence]:
        ready: list[Sequence] = []
        prompts: list[PromptKV | None] = []
        for seq in admitted:
            try:
                prompts.append(self._prompt_kv(seq.adapter))
                ready.append(seq)
            except SoftPromptError as exc:  # e.g. the adapter was removed or its file vanished
                seq.finish("error", str(exc), exc)
        if ready:
            self._live.update((s.seq_id, s) for s in ready)
            self._append(ready, self.runner.prefill(ready, prompts))
        return admitted

    def _prompt_kv(self, adapter: str | None) -> PromptKV | None:
        if adapter is None:
            return None
        return self.registry.prompt_kv(adapter, self.runner.kv_key, self.runner.prompt_kv)

    def _append(self, seqs: list[Sequence], tokens: list[int]) -> list[Sequence]:
        """Post-process: record each new token, update text, finish on eos, stop string or length."""
        for seq, token in zip(seqs, tokens):
            if seq.finished:
                continue
            if seq.params.stop_at_eos and token == self.eos_id:
                self._finish(seq, "stop")
                continue
            seq.output_ids.append(token)
            last = len(seq.output_ids) >= seq.params.max_new_tokens
            text = self._texts.get(seq.seq_id)
            if text is None:
                text = self._texts[seq.seq_id] = self.detokenizer.text(seq.params.stop)
            hit = text.add(seq.output_ids, last)
            seq.text, seq.revisions = text.text, text.revisions
            if hit or last:
                seq.finish("stop" if hit else "length")
        return seqs

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        """Finish ``seq``, its text first completed (a last character it held back) as a full decode gives it."""
        text = self._texts.get(seq.seq_id)
        if text is not None:
            text.flush(seq.output_ids)
            seq.text, seq.revisions = text.text, text.revisions
        seq.finish(reason, error)

    def _release(self) -> None:
        done = {i for i, s in self._live.items() if s.finished}
        if done:
            self.runner.release(done)
            for seq_id in done:
                del self._live[seq_id]
                self._texts.pop(seq_id, None)
        self.scheduler.drop_finished()

    def _all(self) -> list[Sequence]:
        return list(self.scheduler.waiting) + self.scheduler.running

    def run(self, seqs: Seq[Sequence]) -> list[Sequence]:
        """Step until every sequence in ``seqs`` is finished (single-threaded use)."""
        while not all(s.finished for s in seqs):
            self.step()
        return list(seqs)

    def generate(
        self,
        prompts: Seq[str],
        adapters: Seq[str | None] | None = None,
        params: SamplingParams | None = None,
    ) -> list[Sequence]:
        """Generate for every prompt, row i conditioned on ``adapters[i]`` (None: no soft prompt)."""
        names = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(names) != len(prompts):
            raise RequestError(f"got {len(names)} adapters for {len(prompts)} prompts")
        params = params or SamplingParams()
        encoded = [encode_input(self.base.tokenizer, p) for p in prompts]
        return self.run([self.add_request(ids, name, params) for ids, name in zip(encoded, names)])


def _window_note(base: FrozenModel) -> str:
    window = base.family.window
    if window is None:
        return ""
    return f" ({base.family.model_type} attends within a sliding window of {window} tokens; softprompt keeps every sequence inside it)"


def _model_context(base: FrozenModel) -> int:
    config = base.model.config
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT
