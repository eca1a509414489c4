"""A training run's progress for whoever watches it (llmcore/jobs.py, the admin API): a small JSON file.

    progress = ProgressFile("jobs/20261203-064500-123/progress.json")   # None: writes nothing
    progress.write(stage="training", epoch=3, loss=2.1)                  # at most once a second unless forced
    with progress.alive(stage="evaluating"):                            # rewritten every 30 s while the block runs
        ...
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from llmcore.registry import write_atomic


class ProgressFile:
    """Training progress as a small JSON file, replaced atomically at most once a second."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.last = 0.0

    def write(self, force: bool = False, **fields) -> None:
        if self.path is None or (not force and time.monotonic() - self.last < 1.0):
            return
        self.last = time.monotonic()
        write_atomic(self.path, json.dumps({**fields, "updated": time.time()}))

    @contextlib.contextmanager
    def alive(self, every_s: float = 30.0, **fields) -> Iterator[None]:
        """`fields` written now and again every `every_s` until the block ends: evaluating a version takes minutes
        with no step to report, and another replica took 300 s of silence for a dead trainer (llmcore/jobs.py)."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                self.write(force=True, **fields)
                if stop.wait(every_s):
                    return

        beating = threading.Thread(target=beat, daemon=True)
        beating.start()
        try:
            yield
        finally:
            stop.set()
            beating.join()
