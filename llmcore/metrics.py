"""Prometheus metrics of the inference service (prometheus-client, one registry per app)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("kefu_llm_queue_depth", "Requests waiting for a cache slot", registry=r)
        self.active = Gauge("kefu_llm_active_sequences", "Sequences in the running batch", registry=r)
        self.batch_size = Histogram("kefu_llm_batch_size", "Sequences served by one model step", buckets=BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("kefu_llm_step_seconds", "Duration of one engine step", buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("kefu_llm_generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("kefu_llm_time_to_first_token_seconds", "Request arrival to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("kefu_llm_time_per_output_token_seconds", "Mean time between output tokens of a request",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("kefu_llm_requests", "Chat completion requests by outcome", ["outcome"], registry=r)
        self.model_info = Gauge("kefu_llm_model_info", "The served model version (value 1)", ["version", "device"], registry=r)

    def step_done(self, batch_size: int, seconds: float, queue_depth: int, active: int) -> None:
        self.batch_size.observe(batch_size)
        self.step_seconds.observe(seconds)
        self.queue_depth.set(queue_depth)
        self.active.set(active)

    def request_done(self, outcome: str, num_tokens: int = 0, ttft: float | None = None, tpot: float | None = None) -> None:
        self.requests.labels(outcome=outcome).inc()
        self.tokens.inc(num_tokens)
        if ttft is not None:
            self.ttft.observe(ttft)
        if tpot is not None:
            self.tpot.observe(tpot)

    def model_loaded(self, version: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, device=device).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
