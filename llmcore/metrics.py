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
        # what an answer costs (llmcore/costs.py): counters, and their ratios since start as gauges for a dashboard
        self.flops = Counter("kefu_llm_model_flops", "Model FLOPs of the engine steps (prefill and decode)", registry=r)
        self.energy = Counter("kefu_llm_energy_joules", "Energy while the engine stepped (RAPL or NVML)", registry=r)
        self.flops_per_token = Gauge("kefu_llm_flops_per_generated_token", "Model FLOPs per generated token since start",
                                     registry=r)
        self.joules_per_1k = Gauge("kefu_llm_joules_per_1k_generated_tokens", "Energy per 1,000 generated tokens since start"
                                   " (NaN where the machine does not expose it: see kefu_llm_energy_info)", registry=r)
        self.energy_info = Gauge("kefu_llm_energy_info", "Where energy is read from, or why not (value 1)",
                                 ["source", "reason"], registry=r)
        self.totals = {"flops": 0.0, "tokens": 0, "joules": 0.0}
        self.energy_unavailable: str | None = "not measured yet"
        self.joules_per_1k.set(float("nan"))

    def energy_source(self, source: str, unavailable: str | None) -> None:
        self.energy_unavailable = unavailable
        self.energy_info.clear()
        self.energy_info.labels(source=source if unavailable is None else "none", reason=unavailable or "").set(1)

    def step_done(self, batch_size: int, seconds: float, queue_depth: int, active: int, tokens: int = 0,
                  flops: float = 0.0, joules: float | None = None) -> None:
        self.batch_size.observe(batch_size)
        self.step_seconds.observe(seconds)
        self.queue_depth.set(queue_depth)
        self.active.set(active)
        self.tokens.inc(tokens)
        self.flops.inc(flops)
        self.totals["tokens"] += tokens
        self.totals["flops"] += flops
        if joules is not None:
            self.energy.inc(joules)
            self.totals["joules"] += joules
        if self.totals["tokens"]:
            self.flops_per_token.set(self.totals["flops"] / self.totals["tokens"])
            if self.energy_unavailable is None:
                self.joules_per_1k.set(1000 * self.totals["joules"] / self.totals["tokens"])

    def cost(self) -> dict:
        """FLOPs per generated token and joules per 1,000 (None, with the reason, where not measurable)."""
        tokens = self.totals["tokens"]
        return {"generated_tokens": tokens,
                "flops_per_token": self.totals["flops"] / tokens if tokens else None,
                "joules_per_1k_tokens": 1000 * self.totals["joules"] / tokens if tokens and self.energy_unavailable is None else None,
                "energy_unavailable": self.energy_unavailable}

    def request_done(self, outcome: str, ttft: float | None = None, tpot: float | None = None) -> None:
        self.requests.labels(outcome=outcome).inc()
        if ttft is not None:
            self.ttft.observe(ttft)
        if tpot is not None:
            self.tpot.observe(tpot)

    def model_loaded(self, version: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, device=device).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
