"""Settings of the inference service: environment variables (LLMCORE_*) and an optional `.env`.

Command-line flags of `python -m llmcore serve` override them. The model's shape is not a setting:
it travels inside each checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_PROMPT_ROOM = 16  # tokens of the context always left for the prompt


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCORE_", env_file=".env", extra="ignore")

    models: Path = Field(default=Path("models"), description="model registry folder")
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    device: str = "auto"
    threads: int = Field(default=0, ge=0, le=256, description="torch intra-op threads of the engine's decode steps; 0: "
                         "the CPUs this process may use, less one for the event loop (at least 1)")
    prefill_threads: int = Field(default=0, ge=0, le=256, description="torch intra-op threads while prompts are "
                                 "prefilled; 0: the CPUs this process may use")
    max_batch: int = Field(default=32, ge=1, le=1024, description="sequences decoded together")
    max_queue: int = Field(default=256, ge=1, description="requests waiting for a slot before 503")
    max_prefill_tokens: int = Field(default=512, ge=16, description="prompt tokens admitted per step")
    request_timeout_s: float = Field(default=60.0, gt=0)
    default_max_tokens: int = Field(default=128, ge=1)
    select: bool = Field(default=True, description="greedy requests get the version's choice among candidates (its "
                         "select.json); off: the greedy answer alone, one sequence a request")
    promote_margin: float = Field(default=0.0, ge=0, le=1, description="char-F1 a retrained version must gain to be promoted")
    admin_token: str | None = Field(default=None, description="LLMCORE_ADMIN_TOKEN; admin routes are off without it")

    def torch_threads(self) -> tuple[int, int]:
        """Intra-op threads for the engine's decode steps and for its prefills. A decode step is ~30 small operations:
        on 2 vCPU a second thread waits at every operation's barrier and takes the core the event loop needs, so by
        default decoding leaves one CPU to the server around the model; a prefill is large matrix products, which
        every CPU speeds up (both: 2.1x the tokens/s at one client, 1.5x at 32, docs/benchmarks.md)."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.threads or max(1, cpus - 1), self.prefill_threads or cpus

    def max_tokens_limit(self, block_size: int) -> int:
        return block_size - MIN_PROMPT_ROOM
