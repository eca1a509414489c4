"""The console's review of the training log: which exchanges wait for a person (fallbacks, 👎, low-confidence model
answers), the conversation around one, corrections and "reviewed" marks.

    review = Review(services, low_confidence=-0.5)
    page = await review.inbox(Filters(show="todo", source="", rating="", text=""))   # rows newest first, and counts
    rows = await review.around(entry_id, entry)                                      # the same chat, before and after
    await review.correct(entry, "签收后7天内可退货。")                                 # an operator answer in the log
    await review.mark(entry_id, person)
    rows = await review.answers_the_faq_lacks()                                      # operators' answers to make FAQ pairs of

Corrections go into the training log as operators' answers to handed-off customers do (source "operator"): the
training set pins them, repeats them and lets them replace the bot's own answers to that question (bot/trainingset.py).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from bot.console.auth import Person
from bot.exchanges import REVIEW_MARKS, SOURCES, Exchange
from bot.paraphrases import OPERATOR_MATCH
from bot.services import Services

MAX_SCAN = 5000  # the inbox looks at the newest this many exchanges
PAGE_SIZE = 50
MAX_PROPOSED = 20  # operators' answers proposed as FAQ pairs on the handoffs page
AROUND = 4  # exchanges of the same chat shown before and after the one reviewed
AROUND_SCAN = 2000
SHOWS = ("todo", "reviewed", "all")
RATINGS = ("up", "down", "none")
DAYS = (1, 7, 30)  # "the last N days" filters (0: any time)


@dataclass(frozen=True)
class Filters:
    show: str = "todo"  # one of SHOWS: waiting for review and not reviewed yet / reviewed / everything
    source: str = ""  # "" or one of SOURCES
    rating: str = ""  # "" or one of RATINGS
    text: str = ""
    days: int = 0  # 0 or one of DAYS: only the last so many days

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        """From a query string; anything unknown falls back to the default."""
        show, source, rating, days = query.get("show", "todo"), query.get("source", ""), query.get("rating", ""), query.get("days", "")
        return cls(show if show in SHOWS else "todo", source if source in SOURCES else "", rating if rating in RATINGS else "",
                   query.get("q", "").strip()[:200], {str(d): d for d in DAYS}.get(days, 0))


@dataclass(frozen=True)
class Row:
    id: str
    at: float
    chat_id: str
    user_id: str
    question: str
    answer: str
    source: str
    score: str
    version: str
    latency_ms: str
    rating: str
    reviewed: dict | None
    needs_review: bool


@dataclass
class Inbox:
    rows: list[Row]
    counts: Counter = field(default_factory=Counter)  # "todo", "reviewed", sources, ratings: over the rows the text and days admit
    scanned: int = 0


class Review:
    def __init__(self, kefu: Services, low_confidence: float) -> None:
        self.kefu = kefu
        self.low_confidence = low_confidence
        self.marks = f"{kefu.settings.redis_prefix}{REVIEW_MARKS}"  # pruned with the log (bot.exchanges)

    async def inbox(self, filters: Filters) -> Inbox:
        rows = await self._rows(await self.kefu.log.newest(MAX_SCAN))
        inbox, since = Inbox([], scanned=len(rows)), time.time() - filters.days * 86_400
        for row in rows:
            if (filters.text and not _contains(row, filters.text)) or (filters.days and row.at < since):
                continue
            _count(inbox.counts, row)
            if _admits(filters, row) and len(inbox.rows) < PAGE_SIZE:
                inbox.rows.append(row)
        return inbox

    async def answers_the_faq_lacks(self, limit: int = MAX_PROPOSED) -> list[Row]:
        """Operators' answers, newest first, not reviewed yet and unlike every FAQ answer: proposed FAQ pairs."""
        entries = [(i, e) for i, e in await self.kefu.log.newest(MAX_SCAN) if e["source"] == "operator"]
        rows = [row for row in await self._rows(entries) if not row.reviewed]
        index = await self.kefu.faq.index()
        lacking = (r for r in rows if index.nearest_answer(r.answer)[1] < OPERATOR_MATCH)
        return await asyncio.to_thread(lambda: list(itertools.islice(lacking, limit)))  # the newest `limit`: no more work

    async def row(self, entry_id: str) -> Row | None:
        entry = await self.kefu.log.get(entry_id)
        if entry is None:
            return None
        rating = await self.kefu.redis.hget(self.kefu.log.ratings, entry_id)
        return (await self._rows([(entry_id, {**entry, "rating": rating or ""})]))[0]

    async def around(self, row: Row) -> list[Row]:
        """Up to AROUND exchanges of the same chat before this one, this one, and up to AROUND after, oldest first."""
        log = self.kefu.log
        before = [(i, e) for i, e in await log.newest(AROUND_SCAN, before=row.id) if e["chat_id"] == row.chat_id][:AROUND]
        later = await log.redis.xrange(log.stream, f"({row.id}", "+", count=AROUND_SCAN)
        after = [(i, e) for i, e in later if e["chat_id"] == row.chat_id][:AROUND]
        ratings = await log.redis.hmget(log.ratings, [i for i, _ in after]) if after else []
        after = [(i, {**e, "rating": rating or ""}) for (i, e), rating in zip(after, ratings)]
        return [*await self._rows(before[::-1]), row, *await self._rows(after)]

    async def correct(self, row: Row, answer: str) -> str:
        """The right answer to the row's question, as an operator's answer in the training log; its entry id."""
        kefu, user_id = self.kefu, int(row.user_id)
        entry_id = await kefu.log.append(Exchange(int(row.chat_id), user_id, row.question, answer, "operator", None, None, 0))
        await kefu.paraphrases.operator_answered(row.question, answer, user_id)  # an FAQ answer: the wording is proposed
        return entry_id

    async def mark(self, entry_id: str, person: Person) -> bool:
        """Mark the exchange reviewed by `person`; False (the first mark stays) if it was already: a second "Mark
        reviewed" is nothing new to audit (an operator's repeated POSTs pushed older entries out of the capped audit)."""
        mark = json.dumps({"by": person.name, "user_id": person.user_id, "at": time.time()})
        return bool(await self.kefu.redis.hsetnx(self.marks, entry_id, mark))

    async def _rows(self, entries: list[tuple[str, dict[str, str]]]) -> list[Row]:
        marks = await self.kefu.redis.hmget(self.marks, [i for i, _ in entries]) if entries else []
        return [self._row(entry_id, e, json.loads(mark) if mark else None) for (entry_id, e), mark in zip(entries, marks)]

    def _row(self, entry_id: str, e: dict[str, str], mark: dict | None) -> Row:
        return Row(entry_id, int(entry_id.split("-")[0]) / 1000, e["chat_id"], e["user_id"], e["question"], e["answer"], e["source"],
                   e["score"], e["version"], e["latency_ms"], e["rating"], mark, self._needs_review(e))

    def _needs_review(self, e: dict[str, str]) -> bool:
        if e["source"] == "fallback" or e["rating"] == "down":
            return True
        return e["source"] == "model" and bool(e["score"]) and float(e["score"]) < self.low_confidence


def _contains(row: Row, text: str) -> bool:
    needle = text.casefold()
    return needle in row.question.casefold() or needle in row.answer.casefold()


def _admits(filters: Filters, row: Row) -> bool:
    if filters.show == "todo" and (not row.needs_review or row.reviewed):
        return False
    if filters.show == "reviewed" and not row.reviewed:
        return False
    if filters.source and row.source != filters.source:
        return False
    return not filters.rating or (row.rating or "none") == filters.rating


def _count(counts: Counter, row: Row) -> None:
    counts["all"] += 1
    counts[row.source] += 1
    counts[row.rating or "none"] += 1
    if row.reviewed:
        counts["reviewed"] += 1
    elif row.needs_review:
        counts["todo"] += 1
