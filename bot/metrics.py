"""Prometheus metrics of the bot (prometheus-client, one registry per process), served on /metrics by the
webhook server."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BotMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.updates = Counter("kefu_bot_updates", "Updates received, by outcome", ["outcome"], registry=r)
        self.answers = Counter("kefu_bot_answers", "Answers sent, by source", ["source"], registry=r)
        self.latency = Histogram("kefu_bot_answer_seconds", "Question to answer ready", ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.feedback = Counter("kefu_bot_feedback", "Ratings received", ["rating"], registry=r)
        self.errors = Counter("kefu_bot_errors", "Errors while handling updates, by kind", ["kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
