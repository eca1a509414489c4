"""Training jobs on the llmcore host: one at a time, each in its own process, its state in files.

    jobs = JobManager(registry, on_promote=worker.promote)
    job = jobs.start(conversations, arch="transformer", minutes=5)     # JobBusy if one is running
    jobs.status()                 # the latest job: status, progress (stage, epoch, step, loss, tok/s, eta), result
    await jobs.watch()            # background task: finishes jobs whose process ended, promotes when better

A job lives in `DIR/jobs/<id>/`: `job.json` (its state), `data.jsonl` (until the job ends), `progress.json` and `result.json`
(written by `python -m llmcore train`), `train.log`. The trainer runs in its own session, so serving
never stalls and a restarted server finds the job again (still running, or ended while nobody watched).
A failed or killed trainer never touches the registry: versions are committed only when complete,
and only the watcher moves `current`.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from llmcore.registry import Registry, write_atomic

logger = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0
MIN_CONVERSATIONS = 10
MAX_MINUTES = 120
ARCHS = ("transformer", "lstm")
MIN_COMPARED_TURNS = 20  # held-out answers both versions must be compared on before one is promoted without the admin
STALE_S = 300  # a trainer rewrites its progress every second; this much silence from another host means it is gone


class JobError(ValueError):
    """A job that cannot start (bad arguments, too little data)."""


class JobBusy(JobError):
    pass


JOB_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9]{3}")  # what _start names a job
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a caller's name for its start


class JobManager:
    def __init__(self, registry: Registry, on_promote: Callable[[str], Awaitable[object]] | None = None,
                 promote_margin: float = 0.0, python: str = sys.executable) -> None:
        self.registry = registry
        self.root = registry.root / "jobs"
        self.on_promote = on_promote
        self.promote_margin = promote_margin
        self.python = python
        self._processes: dict[str, subprocess.Popen] = {}
        self._starting = threading.Lock()

    def start(self, conversations: list[dict], arch: str = "transformer", minutes: float | None = 5.0,
              epochs: int | None = None, model_overrides: dict | None = None, request_id: str | None = None) -> dict:
        """Write the data and spawn the trainer; the job's state as `status()` shows it. One start at a time (each
        checks that no job runs), the lock held by the calling thread: the server starts jobs in a thread, which a
        handler cancelled meanwhile (its client left) must not let a second start overtake. `request_id`: the caller's
        own name for this start, kept with the job (a caller whose answer was lost finds its job by it)."""
        with self._starting, _locked(self.root / ".lock"):  # and one across processes sharing the registry (replicas)
            return self._start(conversations, arch, minutes, epochs, model_overrides, request_id)

    def _start(self, conversations: list[dict], arch: str, minutes: float | None, epochs: int | None,
               model_overrides: dict | None, request_id: str | None) -> dict:
        _check(conversations, arch, minutes, epochs, model_overrides or {}, request_id)
        try:
            data = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations).encode("utf-8")
        except UnicodeEncodeError:  # JSON may spell a lone surrogate, UTF-8 cannot hold it
            raise JobError("conversations must be valid Unicode text (a lone surrogate is not)") from None
        if (running := self.running()) is not None:
            raise JobBusy(f"job {running['id']} is still running")
        job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 1000:03d}"  # UTC: no clock goes back
        folder = self.root / job_id
        folder.mkdir(parents=True)
        (folder / "data.jsonl").write_bytes(data)
        command = [self.python, "-m", "llmcore", "train", "--data", str(folder / "data.jsonl"), "--arch", arch,
                   "--models", str(self.registry.root), "--progress-file", str(folder / "progress.json"), "--compare-current",
                   "--result-file", str(folder / "result.json"), "--no-progress", "--min-freq", "1"]
        command += ["--max-minutes", str(minutes)] if minutes else ["--epochs", str(int(epochs))]  # JSON's 5.0 is 5
        for name, value in (model_overrides or {}).items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        with open(folder / "train.log", "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._processes[job_id] = process
        job = {"id": job_id, "status": "running", "pid": process.pid, "pid_started": _started(process.pid),
               "host": socket.gethostname(), "arch": arch,
               "minutes": minutes, "epochs": epochs, "num_conversations": len(conversations), "started": time.time(),
               **({"request_id": request_id} if request_id else {})}
        self._save(job)
        logger.info("training job %s started (pid %d): %s, %d conversations", job_id, process.pid, arch, len(conversations))
        return self.status(job_id)

    def status(self, job_id: str | None = None) -> dict | None:
        """A job with its progress (the latest job without an id); None when there is none, or for an id no job can
        have ("../../elsewhere" read and rewrote a job.json outside the jobs folder)."""
        job_id = job_id or self._latest()
        if job_id is None or JOB_ID.fullmatch(job_id) is None or not (self.root / job_id / "job.json").is_file():
            return None
        job = self._load(job_id)
        job["progress"] = _read_json(self.root / job_id / "progress.json")
        return job

    def running(self) -> dict | None:
        job = self.status()
        return job if job is not None and job["status"] == "running" else None

    def mark(self, job_id: str, status: str) -> dict:
        """Record the admin's decision on a job that awaited one: "promoted" (by hand) or "discarded"."""
        job = self._load(job_id)
        job.update(status=status, decided=time.time())
        self._save(job)
        return job

    def cancel(self) -> dict | None:
        """Stop the running trainer (SIGTERM: it writes nothing); the job ends as failed."""
        job = self.running()
        if job is not None and job.get("host", socket.gethostname()) == socket.gethostname() and self._alive(job):  # never
            with contextlib.suppress(ProcessLookupError):  # a pid of another host, or one the system has given to another
                os.killpg(job["pid"], signal.SIGTERM)
        return job

    async def watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the watcher must outlive a bad job folder
                logger.exception("training job check failed")
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def check(self) -> None:
        """Finish the running job if its trainer has ended: failed, promoted, or awaiting a decision."""
        job = self.running()
        if job is None:
            return
        if job.get("host", socket.gethostname()) != socket.gethostname():  # another replica's trainer, or a host gone
            if time.time() - self._last_sign_of_life(job) > STALE_S:  # (a restarted container has a new hostname)
                job.update(status="failed", ended=time.time(), error=f"the trainer on {job['host']} stopped reporting; nothing was saved")
                self._save_ended(job)
            return
        if self._alive(job):
            return
        result = _read_json(self.root / job["id"] / "result.json")
        if result is None:
            job.update(status="failed", ended=time.time(), error=self._why_failed(job))
            self._save_ended(job)
            logger.warning("training job %s failed: %s", job["id"], job["error"])
            return
        job.update(version=result["version"], result=result, ended=time.time(), better=self._better(result))
        job["status"] = "promoted" if job["better"] else "awaiting_decision"
        if job["better"]:  # with a server, it loads the version before `current` moves (Worker.promote)
            try:
                if self.on_promote is not None:
                    await self.on_promote(result["version"])
                else:
                    self.registry.promote(result["version"])
            except Exception as exc:  # RegistryError, or out of memory loading it beside the served one: the old one serves on
                job.update(status="failed", error=f"{result['version']} could not be served: {exc.__class__.__name__}: {exc}")
        self._save_ended(job)
        logger.info("training job %s: %s %s", job["id"], result["version"], job["status"])

    def _better(self, result: dict) -> bool:
        """Promote automatically when the new version answers the held-out questions better (char-F1 by the margin),
        or as well with a lower loss per character, on at least MIN_COMPARED_TURNS answers; with nothing to compare
        against, when there is no current."""
        compare = result.get("compare")
        if not compare:
            return self.registry.current() is None
        if compare.get("turns", MIN_COMPARED_TURNS) < MIN_COMPARED_TURNS:  # a handful of answers decides nothing: the admin does
            return False
        # on the held-out conversations the current version did not train on (llmcore.comparison.compare_with)
        new_f1 = compare.get("new_val_char_f1", result.get("val_char_f1")) or 0.0
        new_loss = compare.get("new_val_loss_per_char", result.get("val_loss_per_char")) or 1e9
        old_f1 = compare.get("val_char_f1") or 0.0
        if new_f1 > old_f1 + self.promote_margin:
            return True
        return new_f1 >= old_f1 and new_loss < (compare.get("val_loss_per_char") or 1e9)

    def _last_sign_of_life(self, job: dict) -> float:
        progress = _read_json(self.root / job["id"] / "progress.json") or {}
        return max(float(progress.get("updated") or 0), float(job.get("started") or 0))

    def _alive(self, job: dict) -> bool:
        process = self._processes.get(job["id"])
        if process is not None:
            return process.poll() is None
        try:  # a trainer started by an earlier server process
            os.kill(job["pid"], 0)
        except OSError:
            return False
        # the same pid, but started at another moment: reused (after a restart, a container's small pids are soon taken
        # by the new server's own threads, and the job stayed "running" for good)
        return job.get("pid_started") is None or _started(job["pid"]) == job["pid_started"]

    def _why_failed(self, job: dict) -> str:
        process = self._processes.pop(job["id"], None)
        code = process.returncode if process is not None else None
        tail = (self.root / job["id"] / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        if code == 130 or code == -signal.SIGTERM:
            return "the trainer was stopped before it finished; nothing was saved"
        if code is None:
            return "the trainer ended while the server was down; nothing was saved. " + " | ".join(tail)
        return f"the trainer exited with status {code}: " + (" | ".join(tail) or "no output")

    def _latest(self) -> str | None:
        """The job started last whose job.json reads (one torn by a power cut answered every training request 500 or
        400 for good), by its start time (names made by a local clock that went back sorted a new job first)."""
        if not self.root.is_dir():
            return None
        jobs = []
        for folder in self.root.iterdir():
            job = _read_json(folder / "job.json") if JOB_ID.fullmatch(folder.name) else None
            if isinstance(job, dict):
                started = job.get("started")
                jobs.append((started if _number(started) else 0.0, folder.name))
        return max(jobs)[1] if jobs else None

    def _load(self, job_id: str) -> dict:
        job = _read_json(self.root / job_id / "job.json") if JOB_ID.fullmatch(job_id) else None
        if not isinstance(job, dict):
            raise JobError(f"no job {job_id}")
        return job

    def _save_ended(self, job: dict) -> None:
        """Save an ended job, and delete its copy of the training data: customers' conversations, up to 64 MiB a job,
        that no /forget and no retention period reached (the version keeps what it needs: its held-out turns and
        evidence)."""
        self._save(job)
        (self.root / job["id"] / "data.jsonl").unlink(missing_ok=True)

    def _save(self, job: dict) -> None:
        job = {k: v for k, v in job.items() if k != "progress"}
        write_atomic(self.root / job["id"] / "job.json", json.dumps(job, ensure_ascii=False, indent=2))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (flock) for the block: two llmcore replicas on one registry both found no job
    running and started two trainers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check(conversations: list[dict], arch: str, minutes: float | None, epochs: int | None, overrides: dict,
           request_id: str | None = None) -> None:
    if request_id is not None and not (isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)):
        raise JobError("request_id must be 1-64 letters, digits, '-' or '_'")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise JobError(f"arch must be one of {', '.join(ARCHS)}")
    if minutes is not None and (not _number(minutes) or not 0 < minutes <= MAX_MINUTES):
        raise JobError(f"minutes must be a number in (0, {MAX_MINUTES}]")
    if epochs is not None and (not _number(epochs) or epochs != int(epochs)):
        raise JobError("epochs must be a whole number")
    if minutes is None and (epochs is None or not 1 <= epochs <= 10_000):
        raise JobError("give minutes, or epochs between 1 and 10000")
    allowed = {"n_layer", "n_embd", "n_head", "block_size"}
    if (not isinstance(overrides, dict) or not set(overrides) <= allowed
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in overrides.values())):
        raise JobError("model overrides: positive n_layer, n_embd, n_head, block_size only")
    if len(conversations) < MIN_CONVERSATIONS:
        raise JobError(f"too little data: {len(conversations)} conversations, at least {MIN_CONVERSATIONS} are needed")
    for i, c in enumerate(conversations):
        if not isinstance(c, dict) or not isinstance(c.get("messages"), list):
            raise JobError(f"conversation {i} is not {{\"messages\": [...]}}")


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); None where /proc cannot tell."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _number(value: object) -> bool:
    """A JSON number (true and false are not, though Python counts them as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

