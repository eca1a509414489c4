"""Continuous batching over token ids: one model step serves every active sequence.

    engine = Engine(model, stop_ids=tok.stop_ids, max_batch=32)
    seq = engine.add(prompt_ids, SamplingParams(max_new_tokens=64))
    while engine.has_work():
        for event in engine.step():      # new tokens and finished sequences of this step
            ...

A step is schedule → forward → sample → post-process, each a small method: the `Scheduler` says which
running sequences decode (llmcore/scheduler.py), and they run in one batched forward over the cache;
then it admits waiting ones into free slots (after the decode forward: a request that arrived during it
is served in this step), whose prompts are prefilled (together, padded, when the model allows it; the
cache grows in buckets of slots as more run at once); the `Sampler` chooses every row's token at once
with its own parameters (llmcore/sampling.py); post-processing appends tokens, ends sequences and frees
their slots. With `prefill_threads`, prompts are prefilled with that many torch threads and decoding keeps
the process's own: a prefill is large matrix products that a second thread speeds up (4 prompts of 134 tokens:
18.5 -> 10.5 ms on 2 vCPU), a decode step ~30 small operations where it only waits (docs/benchmarks.md).

Requests are checked when they are added (length, token ids), so a forward either serves the whole batch
or fails because of a bug, and then `fail_all` ends what was in flight. Synchronous; `add` / `cancel`
may be called from another thread, `step` runs in one thread at a time (the server's worker). Knows
token ids only: no text, no HTTP.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch

from llmcore.costs import step_flops
from llmcore.model import LanguageModel, with_rows
from llmcore.sampling import Sampler, SamplingParams
from llmcore.scheduler import EngineError, QueueFull, Scheduler, Sequence

__all__ = ["Engine", "EngineError", "QueueFull", "Sequence", "StepEvent"]

CACHE_ROWS = 32  # slots the cache starts with (fewer if max_batch is smaller); it doubles when more are in use


@dataclass(slots=True)
class StepEvent:
    seq: Sequence
    token: int | None  # None when the sequence ended without a new token (stop, cancel, error)
    logprob: float | None
    finished: bool


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to `n` for the block, then put back (None: unchanged). Setting them costs ~0.1 µs."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Engine:
    def __init__(self, model: LanguageModel, stop_ids: Collection[int], max_batch: int = 32,
                 max_queue: int = 256, max_prefill_tokens: int = 512, prefill_threads: int | None = None) -> None:
        self.model = model.eval()
        self.prefill_threads = prefill_threads
        self.stop_ids = frozenset(stop_ids)
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.max_len = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.scheduler = Scheduler(max_batch, max_queue, max_prefill_tokens)
        self.sampler = Sampler(max_batch, self.vocab_size, self.max_len, self.device)
        self.first_rows = min(max_batch, CACHE_ROWS)
        self.cache = model.new_cache(self.first_rows, max_len=self.max_len)  # grows in buckets (_room_for), shrinks idle
        self.last_tokens = torch.zeros((max_batch, 1), dtype=torch.long, device=self.device)  # the decode input
        self.last_batch_size = 0
        self.last_step_flops = 0.0  # the model's work in the last step (llmcore/costs.py)
        self.last_step_tokens = 0

    # --- called from any thread -------------------------------------------------------------
    def add(self, prompt: list[int], params: SamplingParams, ignore_stop: bool = False) -> Sequence:
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.max_len:
            raise EngineError(f"prompt of {len(prompt)} tokens leaves no room in the context of {self.max_len}")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise EngineError(f"token ids must lie in [0, {self.vocab_size})")
        key = None if params.is_greedy else params.random_key()
        seq = Sequence(list(prompt), params, key, ignore_stop=ignore_stop,
                       max_tokens=min(params.max_new_tokens, self.max_len - len(prompt)))
        self.scheduler.add(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """The sequence leaves at the next step; its slot is freed there."""
        seq.cancelled = True

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def free_slots(self) -> list[int]:
        return self.scheduler.free_slots

    # --- the engine thread ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """Retire cancelled sequences; then schedule → forward → sample → post-process."""
        events = [StepEvent(seq, None, None, True) for seq in self.scheduler.retire_cancelled()]
        decode = self.scheduler.decoding()
        slots = [s.slot for s in decode]
        fed_at = self.cache.lengths[slots].tolist()  # the position each decode row feeds
        logits = [self._decode(slots)] if decode else []
        prefill = self.scheduler.admit()
        if prefill:
            self._room_for(max(s.slot for s in prefill))
        for seq in prefill:
            self.cache.reset(seq.slot)
            self.sampler.assign(seq.slot, seq.params, seq.key)
        with intra_op_threads(self.prefill_threads if prefill else None):
            logits += self._prefill(prefill)
        batch = decode + prefill
        self.last_step_tokens = 0
        if batch:
            logits = logits[0] if len(logits) == 1 else torch.cat(logits)
            tokens, logprobs = self.sampler.sample(logits, slots + [s.slot for s in prefill])
            events += self._postprocess(batch, prefill, tokens, logprobs)
        self.last_step_flops = step_flops(self.model.config, [len(s.prompt) for s in prefill], fed_at)
        self.last_batch_size = len(batch)
        for event in events:
            if event.finished and event.seq.slot is not None:
                self._release(event.seq)
        self._shrink_if_idle()
        return events

    def fail_all(self, exc: Exception) -> list[StepEvent]:
        """After a step broke in a way the engine could not contain: every sequence, waiting or running, ends
        with an error, and every slot is free again."""
        events = []
        for seq in self.scheduler.drain():
            if not seq.finished:
                seq.error = f"{exc.__class__.__name__}: {exc}"
                seq.output.finish_reason = "error"
                events.append(StepEvent(seq, None, None, True))
            if seq.slot is not None:
                self._release(seq)
        return events

    def _room_for(self, slot: int) -> None:
        """The cache holds `slot`: else it doubles (up to max_batch), the running rows copied over. The lowest free
        slots are taken first, so it grows only with the number of sequences running at once: a max_batch of 256
        costs a 256-row cache only while ~256 run, and a small batch steps as fast as with a small max_batch."""
        rows = self.cache.lengths.shape[0]
        if slot < rows:
            return
        while rows <= slot:
            rows *= 2
        self.cache = with_rows(self.cache, min(rows, self.max_batch))

    def _shrink_if_idle(self) -> None:
        """Once nothing runs or waits, a cache grown for a burst goes back to its first size: a burst of 256 requests
        held a 256-row cache (hundreds of MB at a long context) for as long as the process lived."""
        if self.cache.lengths.shape[0] > self.first_rows and not self.scheduler.has_work():
            self.cache = self.model.new_cache(self.first_rows, max_len=self.max_len)

    def _decode(self, slots: list[int]) -> torch.Tensor:
        """One token for every running sequence (in `slots`). The rows in use are nearly dense (lowest slots
        first): the step runs over rows 0..top-1 without gathering cache rows, and idle rows in between (free,
        or just admitted and prefilled after this) get a dummy token whose effect is forgotten (their slot is
        reset)."""
        top = max(slots) + 1
        logits = self.model.step(self.last_tokens[:top], self.cache)
        if len(slots) < top:
            for slot in sorted(set(range(top)) - set(slots)):
                self.cache.reset(slot)
        return logits if slots == list(range(top)) else logits[slots]

    def _prefill(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """Logits (n, V) of the admitted prompts: in one forward when the model pads safely, else one by one."""
        if len(seqs) > 1 and self.model.pads_safely:
            return [self._prefill_together(seqs)]
        return [self.model.step(torch.tensor([s.prompt], device=self.device), self.cache, rows=torch.tensor([s.slot]))
                for s in seqs]

    def _prefill_together(self, seqs: list[Sequence]) -> torch.Tensor:
        """Several prompts in one forward, padded on the right to the longest."""
        width = max(len(s.prompt) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq.prompt)] = torch.tensor(seq.prompt)
        return self.model.step(ids.to(self.device), self.cache, rows=torch.tensor([s.slot for s in seqs]),
                               lengths=torch.tensor([len(s.prompt) for s in seqs]))  # (n, V)

    def _postprocess(self, batch: list[Sequence], prefill: list[Sequence], tokens: list[int],
                     logprobs: list[float]) -> list[StepEvent]:
        self.last_tokens[self.sampler.rows, 0] = self.sampler.chosen
        now = time.monotonic()
        for seq in prefill:
            seq.first_token_at = now
        events = [self._advance(seq, token, logprob) for seq, token, logprob in zip(batch, tokens, logprobs)]
        self.last_step_tokens = len(events) - sum(e.token is None for e in events)
        return events

    def _advance(self, seq: Sequence, token: int, logprob: float) -> StepEvent:
        if token in self.stop_ids and not seq.ignore_stop:
            seq.output.finish_reason = "stop"
            return StepEvent(seq, None, None, True)
        output = seq.output
        output.token_ids.append(token)
        output.logprobs.append(logprob)
        if len(output.token_ids) >= seq.max_tokens:  # max_new_tokens, or the next token could not be fed
            output.finish_reason = "length"
            return StepEvent(seq, token, logprob, True)
        return StepEvent(seq, token, logprob, False)

    def _release(self, seq: Sequence) -> None:
        self.cache.reset(seq.slot)
        self.scheduler.release(seq)
