"""Drives the engine from asyncio: one background task, model steps in one worker thread, hot reload.

    worker = Worker(Registry("models"), device, max_batch=32, max_queue=256)
    await worker.start()                       # loads `current`
    sub = worker.submit(prompt_ids, params)    # QueueFull when the queue is full
    async for events in sub.updates(): ...     # StepEvents of this request, several when the reader lags
    await worker.reload("v0003")               # new version beside the old one; swap between steps
    await worker.promote("v0003")              # loaded first, then `current` moves: a version that cannot load moves nothing

During a reload the new version loads in another thread while the old one keeps serving; new
requests go to the new engine from the swap on, and requests in flight finish on the old one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from llmcore.costs import EnergyMeter
from llmcore.engine import Engine, Sequence, StepEvent
from llmcore.metrics import ServerMetrics
from llmcore.registry import LoadedModel, Registry
from llmcore.sampling import SamplingParams

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0


@dataclass
class Served:
    """One loaded version with its engine."""

    loaded: LoadedModel
    engine: Engine

    @property
    def version(self) -> str:
        return self.loaded.version


@dataclass(eq=False)
class Submission:
    seq: Sequence
    served: Served
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def updates(self) -> AsyncIterator[list[StepEvent]]:
        """The request's events as they come: one per step, or all that piled up while the reader was busy
        (under load a stream then writes one chunk for several tokens instead of one each)."""
        while True:
            batch = [await self.queue.get()]
            while not batch[-1].finished and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            yield batch
            if batch[-1].finished:
                return


class Worker:
    def __init__(self, registry: Registry, device: torch.device, max_batch: int = 32, max_queue: int = 256,
                 max_prefill_tokens: int = 512, metrics: ServerMetrics | None = None,
                 prefill_threads: int | None = None) -> None:
        self.registry = registry
        self.device = device
        self.engine_options = {"max_batch": max_batch, "max_queue": max_queue, "max_prefill_tokens": max_prefill_tokens,
                               "prefill_threads": prefill_threads}
        self.metrics = metrics or ServerMetrics()
        self.energy = EnergyMeter.for_device(device)
        self.metrics.energy_source("nvml" if device.type == "cuda" else "rapl", self.energy.unavailable)
        self.served: Served | None = None
        self.draining: list[Served] = []
        self.submissions: dict[int, Submission] = {}
        self._step_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._load_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self._wakeup = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    @property
    def version(self) -> str | None:
        return self.served.version if self.served else None

    @property
    def ready(self) -> bool:
        """A version is served and the engine loop runs (a loop that died would leave every request waiting)."""
        loop = next((t for t in self._tasks if t.get_name() == "engine-loop"), None)
        return self.served is not None and (loop is None or not loop.done())

    @property
    def queue_depth(self) -> int:
        return sum(s.engine.num_waiting for s in self._all_served())

    @property
    def active(self) -> int:
        return sum(s.engine.num_running for s in self._all_served())

    @property
    def spare_slots(self) -> int:
        """Batch slots of the served version free for extra work (an answer's other candidates): those beyond half the
        batch that no running or waiting sequence takes. Under load (the batch half full) there are none: extra work
        would slow every answer (docs/benchmarks.md: four variants per answer halved the throughput at 32 clients)."""
        served = self.served
        if served is None:
            return 0
        engine = served.engine
        return max(engine.max_batch - engine.max_batch // 2 - engine.num_running - engine.num_waiting, 0)

    async def start(self, watch: bool = True) -> None:
        await self.reload()
        self._tasks.append(asyncio.create_task(self._run(), name="engine-loop"))
        if watch:
            self._tasks.append(asyncio.create_task(self._watch_current(), name="watch-current"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._step_thread.shutdown(wait=True)
        self._load_thread.shutdown(wait=True)

    def submit(self, prompt: list[int], params: SamplingParams, ignore_stop: bool = False,
               served: Served | None = None) -> Submission:
        """Generate from `prompt` with `served` (the version whose tokenizer made it; default: the one served now). A
        version swapped out since the prompt was made still answers it: its ids mean other characters to the new one."""
        served = served or self.served
        if served is None:
            raise RuntimeError("no model loaded")
        if served is not self.served and served not in self.draining:
            self.draining.append(served)
        seq = served.engine.add(prompt, params, ignore_stop)  # QueueFull / EngineError go to the caller
        submission = Submission(seq, served)
        self.submissions[seq.seq_id] = submission
        self._wakeup.set()
        return submission

    def cancel(self, submission: Submission) -> None:
        submission.served.engine.cancel(submission.seq)
        self._wakeup.set()

    async def reload(self, version: str | None = None) -> str:
        """Load `version` (default: current) beside the served one, then swap between steps."""
        async with self._reload_lock:
            target = version or self.registry.current()
            if target is None:
                raise RuntimeError(f"no current version in {self.registry.root}")
            if self.served and self.served.version == target:
                return target
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(self._load_thread, self.registry.load, target, self.device)
            if self.device.type == "cuda":  # weights and caches in bf16 on the GPU; fp32 on the CPU
                loaded.model.to(torch.bfloat16)
            engine = Engine(loaded.model, loaded.tokenizer.stop_ids, **self.engine_options)
            old, self.served = self.served, Served(loaded, engine)
            if old is not None:
                self.draining.append(old)
            self.metrics.model_loaded(target, str(self.device))
            logger.info("serving %s (was %s)", target, old.version if old else None)
            self._wakeup.set()
            return target

    async def promote(self, version: str, rollback: bool = False) -> str:
        """Serve `version`, then make it `current` (Registry.promote). Loaded first: a version that cannot be loaded
        raises RegistryError and moves nothing, where moving `current` first left a registry no server could start on."""
        served = await self.reload(version)
        self.registry.promote(version, rollback=rollback)
        return served

    def _all_served(self) -> list[Served]:
        return ([self.served] if self.served else []) + self.draining

    async def _run(self) -> None:
        """Wake the engine thread when there is work; it steps on its own until every engine is idle."""
        loop = asyncio.get_running_loop()
        while True:
            self.draining = [s for s in self.draining if s.engine.has_work()]  # a drained old version is dropped
            if not any(s.engine.has_work() for s in self._all_served()):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await loop.run_in_executor(self._step_thread, self._step_until_idle, loop)
            except Exception:  # outside an engine step (metrics, an energy counter): fail what is in flight, go on
                logger.exception("engine loop failed; failing the requests in flight")
                failure = RuntimeError("engine loop failed")
                self._deliver([event for served in self._all_served() for event in served.engine.fail_all(failure)])

    def _step_until_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """The engine thread: step back to back and hand each step's events to the event loop. The model never
        waits for the event loop to come round (it would, with one executor call per step: about a third of
        the time at 32 streams); a stream that falls behind gets several tokens in one update."""
        while not self._stopping:
            busy = [s for s in self._all_served() if s.engine.has_work()]
            if not busy:
                return
            started, joules = time.monotonic(), self.energy.joules()
            events = _step_all([s.engine for s in busy])
            used = None if joules is None or (now := self.energy.joules()) is None else now - joules
            engines = [s.engine for s in busy]
            self.metrics.step_done(sum(e.last_batch_size for e in engines), time.monotonic() - started,
                                   sum(e.num_waiting for e in engines), sum(e.num_running for e in engines),
                                   tokens=sum(e.last_step_tokens for e in engines),
                                   flops=sum(e.last_step_flops for e in engines), joules=used)
            loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: list[StepEvent]) -> None:
        for event in events:
            submission = self.submissions.get(event.seq.seq_id) if event.seq else None
            if submission is None or submission.seq is not event.seq:
                continue
            submission.queue.put_nowait(event)
            if event.finished:
                del self.submissions[event.seq.seq_id]

    async def _watch_current(self) -> None:
        """Follow `DIR/current` when another process (the CLI, a trainer) moves it."""
        failed = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            current = self.registry.current()
            if not current or current in (self.version, failed):
                continue
            try:
                await self.reload(current)
            except Exception:  # a broken version must not stop the server: keep serving the old one
                failed = current
                logger.exception("reload of %s failed; still serving %s", current, self.version)


def _step_all(engines: list[Engine]) -> list[StepEvent]:
    events: list[StepEvent] = []
    for engine in engines:
        try:
            events += engine.step()
        except Exception as exc:  # an engine bug: fail what is in flight rather than leave it hanging
            logger.exception("engine step failed; failing the requests in flight")
            events += engine.fail_all(exc)
    return events
