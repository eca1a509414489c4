"""The numbers behind /stats, from the training log: conversations and messages today and over 7 days,
answers by source, 👍/👎, answer latency, and a chart of answers per day by source; from the handoff records:
handoffs per day, CSAT (share of 4-5 ratings), median time to the first operator reply, and the share of
conversations resolved without a handoff.

    stats = await collect(log, now=time.time(), handoffs=handoffs)
    text = format_stats(stats, model_version)
    png = chart(stats)
"""
from __future__ import annotations

import io
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bot.exchanges import SOURCES, ExchangeLog
from bot.handoff import Handoffs

DAY_S = 86_400


@dataclass
class Stats:
    today: Counter = field(default_factory=Counter)  # messages, conversations
    week: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)  # over 7 days
    ratings: Counter = field(default_factory=Counter)
    latencies_ms: list[int] = field(default_factory=list)
    per_day: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # "11-28" -> source counts
    chats_week: set[str] = field(default_factory=set)
    handoffs_per_day: Counter = field(default_factory=Counter)  # "11-28" -> handoffs opened that day (closed within 7 days)
    handoff_chats: set[str] = field(default_factory=set)
    handoff_ratings: list[int] = field(default_factory=list)
    first_reply_s: list[float] = field(default_factory=list)


async def collect(log: ExchangeLog, now: float | None = None, handoffs: Handoffs | None = None) -> Stats:
    now = now or time.time()
    midnight, week_start = now - now % DAY_S, now - 7 * DAY_S
    stats, chats_today = Stats(), set()
    chats_week = stats.chats_week
    async for entry_id, e in log.entries():
        at = int(entry_id.split("-")[0]) / 1000
        if at < week_start:
            continue
        chats_week.add(e["chat_id"])
        stats.week["messages"] += 1
        stats.by_source[e["source"]] += 1
        stats.per_day[time.strftime("%m-%d", time.gmtime(at))][e["source"]] += 1
        if e["rating"]:
            stats.ratings[e["rating"]] += 1
        if e["source"] not in ("operator", "smalltalk"):  # operators' replies are not timed; canned small talk would flatter p50
            stats.latencies_ms.append(int(e["latency_ms"] or 0))
        if at >= midnight:
            chats_today.add(e["chat_id"])
            stats.today["messages"] += 1
    stats.today["conversations"], stats.week["conversations"] = len(chats_today), len(chats_week)
    for record in await handoffs.records(week_start) if handoffs is not None else []:
        opened = float(record["opened"])
        stats.handoffs_per_day[time.strftime("%m-%d", time.gmtime(opened))] += 1
        stats.handoff_chats.add(record["chat_id"])
        if "rating" in record:
            stats.handoff_ratings.append(int(record["rating"]))
        if "first_reply" in record:
            stats.first_reply_s.append(float(record["first_reply"]) - opened)
    return stats


def format_stats(stats: Stats, model_version: str | None, cost: dict | None = None) -> str:
    up, down = stats.ratings["up"], stats.ratings["down"]
    lines = [f"Today: {stats.today['conversations']} conversations, {stats.today['messages']} messages",
             f"7 days: {stats.week['conversations']} conversations, {stats.week['messages']} messages",
             "Answers by source (7 days): " + ", ".join(f"{s} {stats.by_source[s]}" for s in SOURCES),
             f"Ratings: 👍 {up} / 👎 {down}" + (f" ({up / (up + down):.0%} positive)" if up + down else ""),
             "Answer latency: " + (f"p50 {_pct(stats.latencies_ms, 50)} ms, p95 {_pct(stats.latencies_ms, 95)} ms"
                                   if stats.latencies_ms else "no answers yet"),
             *format_handoffs(stats),
             f"Model: {model_version or 'unknown (llmcore unreachable)'}"]
    if cost is not None:
        lines.append(format_cost(cost))
    return "\n".join(lines)


def format_handoffs(stats: Stats) -> list[str]:
    """Handoffs closed over 7 days: per day, CSAT, the median wait for an operator, and conversations the bot resolved."""
    per_day = ", ".join(f"{day} {n}" for day, n in sorted(stats.handoffs_per_day.items()))
    ratings, waits = stats.handoff_ratings, stats.first_reply_s
    satisfied = sum(r >= 4 for r in ratings)
    conversations = stats.chats_week | stats.handoff_chats
    lines = [f"Handoffs (7 days): {sum(stats.handoffs_per_day.values())}" + (f" ({per_day})" if per_day else ""),
             f"CSAT: {satisfied / len(ratings):.0%} rated 4-5, mean {statistics.mean(ratings):.1f} ({len(ratings)} ratings)"
             if ratings else "CSAT: no ratings yet",
             f"First operator reply: median {duration(statistics.median(waits))}" if waits else "First operator reply: none yet"]
    if conversations:
        alone = len(conversations - stats.handoff_chats)
        lines.append(f"Resolved without a handoff: {alone / len(conversations):.0%} of {len(conversations)} conversations")
    return lines


def duration(seconds: float) -> str:
    """'45 s', '2 min 5 s', '3 h 5 min'."""
    minutes, seconds = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def format_cost(cost: dict) -> str:
    """llmcore's /admin/versions "cost": model FLOPs and energy per generated token, or why there is no figure."""
    if not cost.get("flops_per_token"):
        return "Cost per answer: no model answers since llmcore started"
    energy = (f"{cost['joules_per_1k_tokens']:.1f} J per 1,000 tokens" if cost.get("joules_per_1k_tokens") is not None
              else f"energy n/a ({cost.get('energy_unavailable') or 'not measured'})")
    return f"Cost per answer: {cost['flops_per_token'] / 1e6:.1f} MFLOP per generated token; {energy}"


def chart(stats: Stats) -> bytes | None:
    """Answers per day by source, as a PNG; None when there is nothing to draw."""
    if not stats.per_day:
        return None
    from matplotlib.figure import Figure  # the object API: no pyplot state, so it may draw in a worker thread

    days = sorted(stats.per_day)
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.subplots()
    bottom = [0] * len(days)
    for source in SOURCES:
        counts = [stats.per_day[d][source] for d in days]
        ax.bar(days, counts, bottom=bottom, label=source)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("answers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _pct(values: list[int], q: int) -> int:
    if len(values) < 2:
        return values[0]
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1])
