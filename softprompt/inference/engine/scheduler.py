"""Scheduling policy only: which waiting requests join the running batch, and when. No torch.

Iteration-level (continuous) batching after Orca (Yu et al., OSDI 2022): between two decode
steps, waiting sequences are admitted as long as the batch has room and their prompts fit the
prefill token budget; the engine prefills them and merges them into the running batch, so a new
request never waits for a whole batch to finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from softprompt.inference.engine.config import EngineConfig
from softprompt.inference.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class Plan:
    """What the engine runs this step: a prefill of ``admit``, else one decode step of ``running``."""

    admit: list[Sequence]
    decode: bool


class Scheduler:
    def __init__(self, config: EngineConfig, max_span: int | None = None) -> None:
        """``max_span`` comes from the model, not a config: under a sliding window, the most cache slots
        (padding included) a row may span; None under full attention."""
        self.config, self.max_span = config, max_span
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Plan:
        """Admit first (so new requests start as soon as there is room), otherwise decode."""
        room = self.config.max_batch_size - len(self.running)
        admit: list[Sequence] = []
        tokens = 0
        while self.waiting and len(admit) < room:
            size = len(self.waiting[0].prompt_ids)
            if admit and (tokens + size > self.config.max_prefill_tokens or not self._fits([*admit, self.waiting[0]])):
                break
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            admit.append(seq)
            tokens += size
        self.running.extend(admit)
        return Plan(admit=admit, decode=not admit and bool(self.running))

    def _fits(self, group: list[Sequence]) -> bool:
        """Under a sliding window, every row of a prefill group must stay within ``max_span`` slots.

        A row spans the group's longest soft prompt and longest input (padding included), then
        grows by one slot per generated token; if that stays inside the window, the window never
        hides any of the row's own tokens, and the result equals the row run alone.
        """
        if self.max_span is None:
            return True
        width = max(s.virtual_tokens for s in group) + max(len(s.prompt_ids) for s in group)
        return all(width + s.params.max_new_tokens <= self.max_span for s in group)

    def drop_finished(self) -> None:
        """Forget finished (or cancelled) sequences, waiting or running."""
        self.waiting = deque(s for s in self.waiting if not s.finished)
        self.running = [s for s in self.running if not s.finished]
