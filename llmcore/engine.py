"""Continuous batching over token ids: one model step serves every active sequence.

    engine = Engine(model, stop_ids=tok.stop_ids, max_batch=32)
    seq = engine.add(prompt_ids, SamplingParams(max_new_tokens=64))
    while engine.has_work():
        for event in engine.step():      # new tokens and finished sequences of this step
            ...

Iteration-level scheduling (Orca; as in vLLM and text-generation-inference): between steps, waiting
sequences are admitted into free cache slots (prefill, capped by a token budget per step so decoding
keeps flowing), every running sequence advances by one token in a single batched forward, each is
sampled with its own parameters, and finished ones leave at once, freeing their slot.

Synchronous and thread-safe for `add` / `cancel` from another thread; `step` runs in one thread at a
time (the server's worker). Knows token ids only: no text, no HTTP.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from llmcore.model import LanguageModel
from llmcore.sampling import Generation, SamplingParams, choose_tokens

logger = logging.getLogger(__name__)
_sequence_ids = itertools.count(1)  # unique across engines: old and new versions serve side by side during a reload


class EngineError(ValueError):
    """A request the engine cannot take (prompt too long, queue full)."""


class QueueFull(EngineError):
    pass


@dataclass(eq=False)
class Sequence:
    """One request's progress through the engine."""

    seq_id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    output: Generation = field(default_factory=Generation)
    slot: int | None = None
    cancelled: bool = False
    error: str | None = None
    ignore_stop: bool = False  # generate exactly max_new_tokens (benchmarks)
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.output.finish_reason is not None


@dataclass
class StepEvent:
    seq: Sequence
    token: int | None  # None when the sequence ended without a new token (stop, cancel, error)
    logprob: float | None
    finished: bool


class Engine:
    def __init__(self, model: LanguageModel, stop_ids: Collection[int], max_batch: int = 32,
                 max_queue: int = 256, max_prefill_tokens: int = 512) -> None:
        self.model = model.eval()
        self.stop_ids = frozenset(stop_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.max_len = model.config.block_size
        self.cache = model.new_cache(max_batch, max_len=self.max_len)
        self.free_slots = list(range(max_batch))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()
        self.last_batch_size = 0

    # --- called from any thread -------------------------------------------------------------
    def add(self, prompt: list[int], params: SamplingParams, ignore_stop: bool = False) -> Sequence:
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.max_len:
            raise EngineError(f"prompt of {len(prompt)} tokens leaves no room in the context of {self.max_len}")
        generator = None if params.is_greedy else params.make_generator(self.device)
        seq = Sequence(next(_sequence_ids), list(prompt), params, generator, ignore_stop=ignore_stop)
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} waiting)")
            self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """The sequence leaves at the next step; its slot is freed there."""
        seq.cancelled = True

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # --- the engine thread ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """Retire cancelled, decode one token for the running, admit waiting (prefill), retire finished."""
        events: list[StepEvent] = []
        events += self._retire_cancelled()
        decoding = [s for s in self.running if not s.finished]
        if decoding:  # before admitting: every row in use is then in the decode batch
            events += self._decode(decoding)
        admitted = self._admit()
        if len(admitted) > 1 and self.model.pads_safely:
            events += self._prefill_together(admitted)
        else:
            for seq in admitted:
                events += self._prefill(seq)
        self.last_batch_size = len(decoding) + len(admitted)
        for event in events:
            if event.finished and event.seq.slot is not None:
                self._release(event.seq)
        return events

    def fail_all(self, exc: Exception) -> list[StepEvent]:
        """After a step broke in a way the engine could not contain: every sequence, waiting or running, ends
        with an error, and every slot is free again."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        events = [self._fail(seq, exc) for seq in [*waiting, *self.running] if not seq.finished]
        for seq in list(self.running):
            self._release(seq)
        return events

    def _retire_cancelled(self) -> list[StepEvent]:
        events = []
        with self._lock:
            for seq in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(seq)
                seq.output.finish_reason = "cancelled"
                events.append(StepEvent(seq, None, None, True))
        for seq in [s for s in self.running if s.cancelled]:
            seq.output.finish_reason = "cancelled"
            events.append(StepEvent(seq, None, None, True))
        return events

    def _admit(self) -> list[Sequence]:
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
        for seq in admitted:
            self.cache.reset(seq.slot)
            self.running.append(seq)
        return admitted

    def _prefill(self, seq: Sequence) -> list[StepEvent]:
        try:
            ids = torch.tensor([seq.prompt], device=self.device)
            logits = self.model.step(ids, self.cache, rows=torch.tensor([seq.slot]))  # (1, V)
            tokens, logprobs = choose_tokens(logits, [seq.params], [seq.output], [seq.generator])
        except Exception as exc:  # a request that breaks the model fails alone
            logger.exception("prefill failed for sequence %d", seq.seq_id)
            return [self._fail(seq, exc)]
        seq.first_token_at = time.monotonic()
        return [self._advance(seq, tokens[0], logprobs[0])]

    def _prefill_together(self, seqs: list[Sequence]) -> list[StepEvent]:
        """Several prompts in one forward, padded on the right to the longest."""
        width = max(len(s.prompt) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq.prompt)] = torch.tensor(seq.prompt)
        try:
            logits = self.model.step(ids.to(self.device), self.cache, rows=torch.tensor([s.slot for s in seqs]),
                                     lengths=torch.tensor([len(s.prompt) for s in seqs]))  # (n, V)
            tokens, logprobs = choose_tokens(logits, [s.params for s in seqs], [s.output for s in seqs], [s.generator for s in seqs])
        except Exception:
            logger.exception("batched prefill failed; prefilling the %d sequences one by one", len(seqs))
            for seq in seqs:  # the failed forward may have advanced their lengths
                self.cache.reset(seq.slot)
            return [event for seq in seqs for event in self._prefill(seq)]
        now = time.monotonic()
        for seq in seqs:
            seq.first_token_at = now
        return [self._advance(seq, tok, lp) for seq, tok, lp in zip(seqs, tokens, logprobs)]

    def _decode(self, batch: list[Sequence]) -> list[StepEvent]:
        """One token for every running sequence. Slots are handed out lowest first, so the rows in use are
        nearly dense: the step runs over rows 0..top-1 (no gather of cache rows) and idle rows in between
        get a dummy token whose effect is forgotten (their length is reset)."""
        top = max(s.slot for s in batch) + 1
        last = torch.zeros((top, 1), dtype=torch.long)
        slots = [s.slot for s in batch]
        last[slots, 0] = torch.tensor([s.output.token_ids[-1] for s in batch])
        idle = sorted(set(range(top)) - set(slots))
        try:
            logits = self.model.step(last.to(self.device), self.cache)[slots]  # (B, V)
            for slot in idle:
                self.cache.reset(slot)
            tokens, logprobs = choose_tokens(logits, [s.params for s in batch], [s.output for s in batch],
                                             [s.generator for s in batch])
        except Exception:
            logger.exception("batched decode failed; retrying the %d sequences one by one", len(batch))
            return [event for seq in batch for event in self._decode_alone(seq)]
        return [self._advance(seq, tok, lp) for seq, tok, lp in zip(batch, tokens, logprobs)]

    def _decode_alone(self, seq: Sequence) -> list[StepEvent]:
        try:
            self.cache.lengths[seq.slot] = len(seq.prompt) + len(seq.output.token_ids) - 1
            last = torch.tensor([[seq.output.token_ids[-1]]], device=self.device)
            logits = self.model.step(last, self.cache, rows=torch.tensor([seq.slot]))
            tokens, logprobs = choose_tokens(logits, [seq.params], [seq.output], [seq.generator])
        except Exception as exc:
            return [self._fail(seq, exc)]
        return [self._advance(seq, tokens[0], logprobs[0])]

    def _advance(self, seq: Sequence, token: int, logprob: float) -> StepEvent:
        if token in self.stop_ids and not seq.ignore_stop:
            seq.output.finish_reason = "stop"
            return StepEvent(seq, None, None, True)
        seq.output.token_ids.append(token)
        seq.output.logprobs.append(logprob)
        full = len(seq.prompt) + len(seq.output.token_ids) >= self.max_len  # the next token could not be fed
        if len(seq.output.token_ids) >= seq.params.max_new_tokens or full:
            seq.output.finish_reason = "length"
        return StepEvent(seq, token, logprob, seq.finished)

    def _fail(self, seq: Sequence, exc: Exception) -> StepEvent:
        seq.error = f"{exc.__class__.__name__}: {exc}"
        seq.output.finish_reason = "error"
        return StepEvent(seq, None, None, True)

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.reset(seq.slot)
        self.free_slots.append(seq.slot)
        self.free_slots.sort()  # lowest slots first keeps the active rows compact
        seq.slot = None
