"""Which sequences run in the next engine step: the waiting queue, the cache slots, admission and retirement.

    scheduler = Scheduler(max_batch=32, max_queue=256, max_prefill_tokens=512)
    scheduler.add(seq)                         # QueueFull when max_queue are waiting
    decode = scheduler.decoding()              # the running sequences, one token each this step
    prefill = scheduler.admit()                # waiting ones into free slots, within the prompt budget
    scheduler.release(seq)                     # a finished sequence gives its slot back

Iteration-level scheduling (Orca; as in vLLM and nano-vllm): between steps, waiting sequences are admitted
into free cache slots, capped by a prompt-token budget per step so that decoding keeps flowing, and every
running sequence decodes one token per step. Slots are handed out lowest first, so the rows in use stay
nearly dense. Knows no model and no tensors; `add` and `cancel` may be called from any thread, `schedule`
and `release` from the engine's thread only.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from llmcore.sampling import Generation, SamplingParams

_sequence_ids = itertools.count(1)  # unique across engines: old and new versions serve side by side during a reload


class EngineError(ValueError):
    """A request the engine cannot take (prompt too long or empty, unknown token ids, queue full)."""


class QueueFull(EngineError):
    pass


@dataclass(eq=False)
class Sequence:
    """One request's progress through the engine."""

    prompt: list[int]
    params: SamplingParams
    key: int | None  # a sampled sequence's random key (SamplingParams.random_key)
    seq_id: int = field(default_factory=lambda: next(_sequence_ids))
    output: Generation = field(default_factory=Generation)
    slot: int | None = None
    cancelled: bool = False
    error: str | None = None
    ignore_stop: bool = False  # generate exactly max_new_tokens (benchmarks)
    max_tokens: int = 0  # tokens it may produce: max_new_tokens, fewer where the context would end first
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.output.finish_reason is not None


class Scheduler:
    def __init__(self, max_batch: int, max_queue: int, max_prefill_tokens: int) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.free_slots = list(range(max_batch))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()

    def add(self, seq: Sequence) -> None:
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} waiting)")
            self.waiting.append(seq)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running)

    def retire_cancelled(self) -> list[Sequence]:
        """Cancelled sequences, waiting or running, finish now ("cancelled"); running ones still hold their
        slot until `release`."""
        with self._lock:
            gone = [s for s in self.waiting if s.cancelled]
            for seq in gone:
                self.waiting.remove(seq)
        gone += [s for s in self.running if s.cancelled and not s.finished]
        for seq in gone:
            seq.output.finish_reason = "cancelled"
        return gone

    def decoding(self) -> list[Sequence]:
        """The running sequences that decode a token this step."""
        return [s for s in self.running if not s.finished]

    def admit(self) -> list[Sequence]:
        """Waiting sequences into free slots, lowest first, within the prompt-token budget (the first always fits,
        so a long prompt cannot wait forever). The engine admits after its decode forward, so that a request
        that arrived meanwhile is prefilled in the same step."""
        admitted, budget = [], self.max_prefill_tokens
        with self._lock:
            while self.waiting and self.free_slots:
                seq = self.waiting[0]
                if admitted and len(seq.prompt) > budget:
                    break  # the next step takes it; decoding must keep flowing
                self.waiting.popleft()
                seq.slot = self.free_slots.pop(0)
                budget -= len(seq.prompt)
                admitted.append(seq)
        self.running += admitted
        return admitted

    def release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.free_slots.append(seq.slot)
        self.free_slots.sort()  # lowest slots first keeps the active rows compact
        seq.slot = None

    def drain(self) -> list[Sequence]:
        """Every sequence, waiting or running, out of the scheduler (after a failure the engine could not contain)."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        return [*waiting, *self.running]
