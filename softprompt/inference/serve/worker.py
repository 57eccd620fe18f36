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
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from softprompt.inference.engine import Engine, Sequence
from softprompt.inference.serve.errors import APIError

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5


@dataclass(frozen=True)
class Snapshot:
    """What a handler sees of its sequence after a step; built in the engine thread."""

    text: str  # safe-to-send text (see Sequence.stream_text)
    completion_tokens: int
    finish_reason: str | None
    error: str | None


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


class EngineWorker:
    def __init__(self, engine: Engine, max_concurrent: int) -> None:
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.active = 0  # sequences holding a slot
        self._slots = threading.Lock()
        self._watchers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Snapshot]]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

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

    async def stream(self, seq: Sequence) -> AsyncGenerator[Snapshot, None]:
        """Run a sequence from ``engine.make_request``, yielding a snapshot after each step that changed it."""
        queue: asyncio.Queue[Snapshot] = asyncio.Queue()
        self._watchers[seq.seq_id] = (asyncio.get_running_loop(), queue)  # before it can produce anything
        self.engine.submit(seq)
        self._wake.set()
        try:
            while True:
                snapshot = await queue.get()
                yield snapshot
                if snapshot.finish_reason is not None:
                    return
        finally:
            self._watchers.pop(seq.seq_id, None)
            if not seq.finished:
                self.engine.cancel(seq)
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
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
        loop, queue = watcher
        snapshot = Snapshot(seq.stream_text(), len(seq.output_ids), seq.finish_reason, seq.error)
        try:
            loop.call_soon_threadsafe(queue.put_nowait, snapshot)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass
