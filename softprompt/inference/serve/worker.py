"""Bridge between asyncio request handlers and the engine, which steps in its own thread.

Handlers submit sequences and await snapshots of them; the engine thread runs schedule -> run
-> post-process while there is work and pushes each changed sequence's snapshot into its
handler's queue through ``call_soon_threadsafe``. A handler that stops listening (client gone,
task cancelled) cancels its sequence, which leaves the batch at the engine's next step, and
gives back its slot.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from softprompt.inference.engine import Engine, Sequence
from softprompt.inference.serve.errors import APIError

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5


@dataclass(frozen=True)
class Snapshot:
    """What a handler sees of its sequence after a step; built in the engine thread."""

    text: str  # Sequence.text as it was (the same string, not a copy)
    safe: int  # how much of it may be sent now (see Sequence.stream_end)
    completion_tokens: int
    finish_reason: str | None
    error: str | None
    sampled: int = 0  # entries in Sequence.logprobs so far (read by the handler; the list only grows)
    revisions: int = 0  # Sequence.revisions: a change means text may differ before its end


class Observer(Protocol):
    """Told about every sequence the worker runs (the server's metrics)."""

    def first_token(self, seconds: float) -> None: ...

    def sequence_done(self, prompt_tokens: int, generated: int, seconds: float | None) -> None: ...


@dataclass
class Slots:
    """Request slots held by one HTTP request; ``release`` is idempotent, so every exit path may call it."""

    worker: EngineWorker
    count: int
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.worker._give_back(self.count)


Watcher = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[tuple[int, Snapshot]]", int]


class EngineWorker:
    def __init__(self, engine: Engine, max_concurrent: int, observer: Observer | None = None) -> None:
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.observer = observer
        self.active = 0  # sequences holding a slot
        self._slots = threading.Lock()
        self._watchers: dict[int, Watcher] = {}
        self._aborts: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def abort(self, reason: str) -> None:
        """End every queued and running sequence with ``reason`` as its error, in the engine thread (drain)."""
        self._aborts.put(reason)
        self._wake.set()

    def acquire(self, count: int) -> Slots:
        """Take ``count`` request slots, or fail with 429 when the server is full."""
        with self._slots:
            if self.active + count > self.max_concurrent:
                raise APIError(
                    429, f"too many concurrent requests (limit {self.max_concurrent}); retry later", code="rate_limit"
                )
            self.active += count
        return Slots(self, count)

    def _give_back(self, count: int) -> None:
        with self._slots:
            self.active -= count

    async def stream(self, seqs: list[Sequence]) -> AsyncGenerator[tuple[int, Snapshot], None]:
        """Run sequences from ``engine.make_request``; yield (index, snapshot) after each step that changed one.

        Ends once every sequence has finished. Leaving early cancels the unfinished ones.
        """
        updates: asyncio.Queue[tuple[int, Snapshot]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for index, seq in enumerate(seqs):  # watch before they can produce anything
            self._watchers[seq.seq_id] = (loop, updates, index)
        start = time.perf_counter()
        for seq in seqs:
            self.engine.submit(seq)
        self._wake.set()
        last: dict[int, Snapshot] = {}
        ended: dict[int, float] = {}  # seconds from submission to the end, per finished sequence
        try:
            while len(ended) < len(seqs):
                index, snapshot = await updates.get()
                if index in ended:
                    continue  # an abort can report a sequence that had already finished
                if index not in last and snapshot.error is None and self.observer is not None:
                    self.observer.first_token(time.perf_counter() - start)
                if snapshot.finish_reason is not None:
                    ended[index] = time.perf_counter() - start
                last[index] = snapshot
                yield index, snapshot
        finally:
            for seq in seqs:
                self._watchers.pop(seq.seq_id, None)
                if not seq.finished:
                    self.engine.cancel(seq)
            self._wake.set()
            self._report(seqs, last, ended)

    def _report(self, seqs: list[Sequence], last: dict[int, Snapshot], ended: dict[int, float]) -> None:
        if self.observer is None:
            return
        for index, seq in enumerate(seqs):
            snap = last.get(index)
            if snap is not None and (snap.error is None or snap.completion_tokens):  # it was prefilled
                done = snap.finish_reason in ("stop", "length")
                self.observer.sequence_done(len(seq.prompt_ids), snap.completion_tokens, ended[index] if done else None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._aborts.empty():
                for seq in self.engine.abort_all(self._aborts.get()):
                    self._publish(seq)
                continue
            if not self.engine.has_work:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                changed = self.engine.step()
            except Exception as exc:  # keep serving: fail what was running, then carry on
                log.exception("engine step failed")
                changed = self.engine.abort_all(f"engine error: {exc}")
            for seq in changed:
                self._publish(seq)

    def _publish(self, seq: Sequence) -> None:
        watcher = self._watchers.get(seq.seq_id)
        if watcher is None:
            return
        loop, updates, index = watcher
        snapshot = Snapshot(
            seq.text,
            seq.stream_end(),
            len(seq.output_ids),
            seq.finish_reason,
            seq.error,
            len(seq.logprobs),
            seq.revisions,
        )
        try:
            loop.call_soon_threadsafe(updates.put_nowait, (index, snapshot))
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass
