"""The training log: every exchange (question, answer, source, confidence, version, latency) in a Redis
stream, scrubbed of personal data before it is written; 👍/👎 ratings attach to an entry.

    log = ExchangeLog(redis, prefix="kefu:", retention_days=90)
    entry_id = await log.append(Exchange(chat_id, user_id, question, answer, "faq", 0.93, None, 12))
    await log.rate(entry_id, user_id, "down")          # "new" | "changed" | "same"; None: gone, or not this user's
    await log.latest(user_id, chat_id)                # the user's last exchange in that chat, with its id and rating
    async for conversation in log.conversations():    # chat JSONL records, the llmcore training format
        ...
    page = await log.newest(50, before=entry_id)        # newest first, for the console's inbox

The Redis client decodes responses (`decode_responses=True`).
Entries older than the retention leave the stream as new ones arrive (XADD MINID).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from bot.pii import scrub

RATINGS = ("up", "down")
SOURCES = ("faq", "smalltalk", "model", "fallback", "operator")
SHARED_SOURCES = ("faq", "smalltalk")  # answers that are the shop's own text, not written for this customer
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # ASCII digits: \d takes "١", which Redis refuses
MAX_ID_PART = 2**64 - 1  # a stream id's two numbers are unsigned 64-bit: Redis refuses a larger one with an error


def is_entry_id(text: str) -> bool:
    """A stream entry id Redis accepts (a forged button's larger number would raise, not miss)."""
    return bool(ENTRY_ID.fullmatch(text)) and all(int(part) <= MAX_ID_PART for part in text.split("-"))
LATEST_LOOKBACK = 20  # a user's latest exchanges searched for one in a given chat
PRUNE_EVERY_S = 3600.0  # how often appends drop the ratings and review marks of trimmed entries
USER_INDEX_PRUNE_AT = 64  # a user's index drops the ids of trimmed entries each time it grows by this many
REVIEW_MARKS = "console:reviewed"  # the console's marks (bot/console/review.py), keyed by entry id


# An entry and its place in its user's index are written as one (a /forget between the two left the entry unerased),
# and /forget reads the index and deletes what it names as one (an entry logged in between kept its data). An active
# customer's index would keep the ids of entries long trimmed: it drops them each time it grows by another
# USER_INDEX_PRUNE_AT (in Redis: reading it whole at every append cost a busy customer's index at every question).
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MINID', ARGV[1], '*', unpack(ARGV, 4))
redis.call('SADD', KEYS[2], id)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local size, every = redis.call('SCARD', KEYS[2]), tonumber(ARGV[3])
if size > every and (size - every - 1) % every == 0 then
    local oldest = tonumber(string.match(ARGV[1], '^%d+'))
    for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
        if tonumber(string.match(member, '^%d+')) < oldest then redis.call('SREM', KEYS[2], member) end
    end
end
return id
"""
_FORGET = """
local ids = redis.call('SMEMBERS', KEYS[3])
for start = 1, #ids, 1000 do
    local chunk = {unpack(ids, start, math.min(start + 999, #ids))}
    redis.call('XDEL', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
end
redis.call('DEL', KEYS[3], KEYS[4])
return #ids
"""


def _entry_ms(entry_id: str) -> int:
    """The time part of a stream entry id (anything else: 0, the oldest)."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True)
class Exchange:
    chat_id: int
    user_id: int
    question: str
    answer: str
    source: str  # one of SOURCES
    score: float | None  # the FAQ score, or the model's confidence (mean token log-probability)
    version: str | None  # the model version that answered
    latency_ms: int


class ExchangeLog:
    def __init__(self, redis: Redis, prefix: str, retention_days: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_ms = retention_days * 86_400_000
        self.stream = f"{prefix}log"
        self.ratings = f"{prefix}ratings"
        self._pruned_at = -PRUNE_EVERY_S  # the first append prunes
        self._append = redis.register_script(_APPEND)
        self._forget = redis.register_script(_FORGET)

    async def append(self, exchange: Exchange) -> str:
        fields = {k: "" if v is None else str(v) for k, v in asdict(exchange).items()}
        # an answer from the FAQ or the canned small talk is the shop's own text, the same for every customer: scrubbing
        # it turned the shop's e-mail into [EMAIL] in training data (and the model then learned both)
        shared = exchange.source in SHARED_SOURCES
        fields["question"], fields["answer"] = scrub(exchange.question), exchange.answer if shared else scrub(exchange.answer)
        oldest = f"{int(time.time() * 1000) - self.retention_ms}-0"
        mine = self._user_key(exchange.user_id)  # the user's index lives as long as their newest entry
        entry_id = await self._append(keys=[self.stream, mine], args=[oldest, self.retention_ms, USER_INDEX_PRUNE_AT,
                                                                      *(x for item in fields.items() for x in item)])
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            await self._prune(oldest)
        return entry_id

    async def _prune(self, oldest: str) -> None:
        """Drop what hashes keyed by entry id (ratings, the console's review marks) hold for entries the log has trimmed:
        they grew by one field per rating or mark, forever."""
        for key in (self.ratings, f"{self.prefix}{REVIEW_MARKS}"):
            stale = [field async for field, _ in self.redis.hscan_iter(key, count=1000) if _entry_ms(field) < _entry_ms(oldest)]
            for start in range(0, len(stale), 1000):
                await self.redis.hdel(key, *stale[start : start + 1000])

    async def get(self, entry_id: str) -> dict[str, str] | None:
        if not is_entry_id(entry_id):
            return None
        found = await self.redis.xrange(self.stream, entry_id, entry_id)
        return found[0][1] if found else None

    async def rate(self, entry_id: str, user_id: int, rating: str) -> str | None:
        """Attach a rating: "new", "changed", or "same" (a second tap of the same button, which counts for nothing more);
        None (nothing changes) for a forged, stale or someone else's entry."""
        entry = await self.get(entry_id)
        if rating not in RATINGS or entry is None or entry["user_id"] != str(user_id):
            return None
        async with self.redis.pipeline(transaction=True) as pipe:
            before, _ = await pipe.hget(self.ratings, entry_id).hset(self.ratings, entry_id, rating).execute()
        return "new" if before is None else "same" if before == rating else "changed"

    async def latest(self, user_id: int, chat_id: int) -> dict[str, str] | None:
        """The user's most recent exchange in that chat, with its "id", its "at" (Unix time) and its "rating" ("" unrated)."""
        ids = sorted(await self.redis.smembers(self._user_key(user_id)), key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
        for entry_id in ids[:LATEST_LOOKBACK]:
            entry = await self.get(entry_id)
            if entry is not None and entry["chat_id"] == str(chat_id):
                rating = await self.redis.hget(self.ratings, entry_id)
                return {**entry, "id": entry_id, "at": str(int(entry_id.split("-")[0]) / 1000), "rating": rating or ""}
        return None

    async def link_message(self, chat_id: int, message_id: int, entry_id: str) -> None:
        """Remember which entry a bot message shows (for /why): one hash per chat, kept as long as an entry may live after
        the chat's last answer (a link to an entry the log has dropped finds nothing), so that /forget deletes one key
        instead of searching the keyspace for a key per answer."""
        key = self._links_key(chat_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.hset(key, str(message_id), entry_id).pexpire(key, self.retention_ms).execute()

    async def entry_for_message(self, chat_id: int, message_id: int) -> tuple[str, dict[str, str]] | None:
        entry_id = await self.redis.hget(self._links_key(chat_id), str(message_id))
        entry = await self.get(entry_id) if entry_id else None
        return (entry_id, entry) if entry is not None else None

    async def forget_user(self, user_id: int) -> int:
        """Erase the user's exchanges and ratings; returns how many exchanges went."""
        # their private chat's links go too (a private chat's id is the user's)
        return await self._forget(keys=[self.stream, self.ratings, self._user_key(user_id), self._links_key(user_id)])

    async def entries(self, batch: int = 500) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every entry, oldest first, with its rating under "rating" ("" when unrated)."""
        start = "-"
        while True:
            chunk = await self.redis.xrange(self.stream, start, "+", count=batch)
            if not chunk:
                return
            ratings = await self.redis.hmget(self.ratings, [i for i, _ in chunk])
            for (entry_id, fields), rating in zip(chunk, ratings):
                yield entry_id, {**fields, "rating": rating or ""}
            start = "(" + chunk[-1][0]

    async def newest(self, count: int, before: str = "+") -> list[tuple[str, dict[str, str]]]:
        """Up to `count` entries older than `before` (an entry id, or "+" for the newest), newest first, rated like entries()."""
        end = "+" if before == "+" else f"({before}"
        chunk = await self.redis.xrevrange(self.stream, end, "-", count=count)
        ratings = await self.redis.hmget(self.ratings, [i for i, _ in chunk]) if chunk else []
        return [(entry_id, {**fields, "rating": rating or ""}) for (entry_id, fields), rating in zip(chunk, ratings)]

    async def conversations(self, include_down: bool = False, include_fallback: bool = False,
                            include_smalltalk: bool = False, context_turns: int = 0, with_user: bool = False) -> AsyncIterator[dict]:
        """Chat-format training records; 👎 answers, fallbacks and small talk (canned, it teaches nothing) are left
        out unless asked for. With `context_turns`, each record starts with up to that many earlier messages of
        the same customer in the same chat (scrubbed like every entry), as the bot's history showed them to the model; their assistant
        turns carry `"weight": 0`, context only, since they may be fallbacks or 👎. An operator's answer to the
        question just before it takes the place of the bot's answer there, as the customer's question answered once.
        `with_user`: the meta says whose exchange it was (for counting only: no user id goes into training data)."""
        recent: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=context_turns))
        async for entry_id, e in self.entries():
            question = {"role": "user", "content": e["question"]}
            answer = {"role": "assistant", "content": e["answer"]}
            chat = recent[e["chat_id"], e["user_id"]]  # the asker's own earlier turns, as the bot shows the model
            if e["source"] == "operator" and len(chat) >= 2 and chat[-2]["content"] == e["question"]:
                chat.pop(), chat.pop()  # an operator answers the question the bot could not: it replaces that answer
            context = list(chat) if context_turns > 0 else []
            if context_turns > 0:
                chat.extend([question, {**answer, "weight": 0}])
            if ((e["rating"] == "down" and not include_down) or (e["source"] == "fallback" and not include_fallback)
                    or (e["source"] == "smalltalk" and not include_smalltalk)):
                continue
            yield {"messages": [*context, question, answer],
                   "meta": {"id": entry_id, "source": e["source"], "rating": e["rating"] or None, "version": e["version"] or None,
                            "score": float(e["score"]) if e["score"] else None, **({"user_id": e.get("user_id")} if with_user else {})}}

    def _user_key(self, user_id: int) -> str:
        return f"{self.prefix}user:{user_id}:log"

    def _links_key(self, chat_id: int) -> str:
        return f"{self.prefix}msgs:{chat_id}"

