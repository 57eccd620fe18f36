"""Scheduling policy only: which waiting requests join the running batch, and when. No torch.

Iteration-level (continuous) batching after Orca (Yu et al., OSDI 2022): between two decode
steps, waiting sequences are admitted as long as the batch has room and their prompts fit the
prefill token budget; the engine prefills them and merges them into the running batch, so a new
request never waits for a whole batch to finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from softprompt.core.errors import ConfigError
from softprompt.inference.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = field(default=32, metadata={"help": "most sequences decoded together"})
    max_prefill_tokens: int = field(default=4096, metadata={"help": "most prompt tokens prefilled in one step"})

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_prefill_tokens < 1:
            raise ConfigError("max_batch_size and max_prefill_tokens must be at least 1")


@dataclass(frozen=True)
class Plan:
    """What the engine runs this step: a prefill of ``admit``, else one decode step of ``running``."""

    admit: list[Sequence]
    decode: bool


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
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
            if admit and tokens + size > self.config.max_prefill_tokens:
                break
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            admit.append(seq)
            tokens += size
        self.running.extend(admit)
        return Plan(admit=admit, decode=not admit and bool(self.running))

    def drop_finished(self) -> None:
        """Forget finished (or cancelled) sequences, waiting or running."""
        self.waiting = deque(s for s in self.waiting if not s.finished)
        self.running = [s for s in self.running if not s.finished]
