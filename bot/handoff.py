"""Chats handed over to a human operator, in Redis: which chats are open, since when, their last question (scrubbed),
and which message in the operators' group belongs to which chat (an operator answers by replying to it). A closed
handoff leaves a record (opened, first operator reply, closed, how, the customer's 1-5 rating) for /stats, and a chat
counts its fallbacks and 👎 in a row (the bot offers a colleague after HANDOFF_AFTER_FALLBACKS).

    handoffs = Handoffs(redis, prefix="kefu:", idle_s=1800)
    if await handoffs.open(chat_id, user_id, question): ...   # False when it already was
    await handoffs.link(operator_message_id, chat_id)          # a reply to that message goes to chat_id
    chat_id = await handoffs.chat_for(operator_message_id)
    await handoffs.touch(chat_id, replied=True)                # an operator answered (the first time is kept)
    await handoffs.position(chat_id)                           # 3: two opened earlier wait for their first answer too
    for chat_id in await handoffs.idle(): ...                  # open with no message for idle_s
    record_id = await handoffs.close(chat_id, "done")          # None when none was open
    await handoffs.rate(record_id, user_id, "5")               # False (nothing changes) unless it is the customer's to rate
    await handoffs.records(since)                              # closed since then, with their ratings
    await handoffs.count_miss(chat_id); await handoffs.clear_misses(chat_id)
"""
from __future__ import annotations

import time

from redis.asyncio import Redis

from bot.pii import scrub

LINK_TTL_S = 7 * 24 * 3600
RECORD_TTL_S = 90 * 24 * 3600  # closed handoffs and their ratings, for /stats
MISSES_TTL_S = 24 * 3600  # fallbacks in a row a day apart are not one bad conversation
RATINGS = ("1", "2", "3", "4", "5")
RATED_HOW = "done"  # only a handoff an operator closed with /done asks the customer for a rating
# atomic, so that a handoff closed meanwhile (by /done, /end, the idle sweep) is not brought back half-made
OPEN_SCRIPT = """
if redis.call('hsetnx', KEYS[1], 'user_id', ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'question', ARGV[2], 'opened', ARGV[3], 'lang', ARGV[5])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
TOUCH_SCRIPT = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('hset', KEYS[1], 'question', ARGV[1]) end
if ARGV[4] == '1' then
  redis.call('hsetnx', KEYS[1], 'first_reply', ARGV[2])
  redis.call('zrem', KEYS[3], ARGV[3])
end
redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
# the open handoff becomes a record in one step: /done, /end and the idle sweep may race, and only one of them records it
CLOSE_SCRIPT = """
local state = redis.call('hmget', KEYS[1], 'user_id', 'opened', 'first_reply')
if not state[1] then return false end
local id = tostring(redis.call('incr', KEYS[5]))
local record = ARGV[4] .. id
redis.call('hset', record, 'chat_id', ARGV[1], 'user_id', state[1], 'opened', state[2], 'closed', ARGV[2], 'how', ARGV[3])
if state[3] then redis.call('hset', record, 'first_reply', state[3]) end
redis.call('expire', record, ARGV[5])
redis.call('zadd', KEYS[3], ARGV[2], id)
redis.call('zremrangebyscore', KEYS[3], '-inf', ARGV[2] - ARGV[5])
redis.call('sadd', KEYS[4], id)
redis.call('expire', KEYS[4], ARGV[5])
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[6], ARGV[1])
return id
"""
RATE_SCRIPT = """
local state = redis.call('hmget', KEYS[1], 'user_id', 'how', 'rating')
if state[1] ~= ARGV[1] or state[2] ~= ARGV[4] or state[3] then return 0 end
redis.call('hset', KEYS[1], 'rating', ARGV[2], 'rated', ARGV[3])
return 1
"""


class Handoffs:
    def __init__(self, redis: Redis, prefix: str, idle_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.idle_s = idle_s
        self.active = f"{prefix}handoffs"  # sorted set: chat id -> time of the last message
        self.closed = f"{prefix}handoffs:closed"  # sorted set: record id -> time it closed
        self.waiting = f"{prefix}handoffs:waiting"  # sorted set: chat id -> time opened, until an operator answers

    def _key(self, chat_id: int) -> str:
        return f"{self.prefix}handoff:{chat_id}"

    async def open(self, chat_id: int, user_id: int, question: str, lang: str = "zh") -> bool:
        """Open a handoff (`lang`: the customer's, for what the bot tells them when it closes); False (and nothing
        changes) when one is open already."""
        opened = await self.redis.eval(OPEN_SCRIPT, 3, self._key(chat_id), self.active, self.waiting, user_id, scrub(question), time.time(),
                                       chat_id, lang)
        return bool(opened)

    async def get(self, chat_id: int) -> dict[str, str] | None:
        state = await self.redis.hgetall(self._key(chat_id))
        return state if "user_id" in state else None

    def _record(self, record_id: str) -> str:
        return f"{self.prefix}handoff:record:{record_id}"

    async def touch(self, chat_id: int, question: str | None = None, replied: bool = False) -> None:
        """A message in an open handoff: its time (for the idle close), the user's latest question, and when an operator
        first answered (`replied`); nothing if closed."""
        await self.redis.eval(TOUCH_SCRIPT, 3, self._key(chat_id), self.active, self.waiting, "" if question is None else scrub(question),
                              time.time(), chat_id, "1" if replied else "")

    async def link(self, operator_message_id: int, chat_id: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}handoff:msg:{operator_message_id}", chat_id, ex=LINK_TTL_S)
            pipe.sadd(f"{self._key(chat_id)}:msgs", operator_message_id).expire(f"{self._key(chat_id)}:msgs", LINK_TTL_S)
            await pipe.execute()

    async def chat_for(self, operator_message_id: int) -> int | None:
        chat = await self.redis.get(f"{self.prefix}handoff:msg:{operator_message_id}")
        return int(chat) if chat is not None else None

    async def close(self, chat_id: int, how: str) -> str | None:
        """Close and record the open handoff (`how`: done, end, idle); its record id, or None when none was open."""
        keys = (self._key(chat_id), self.active, self.closed, f"{self._key(chat_id)}:records", f"{self.prefix}handoff:next",
                self.waiting)
        return await self.redis.eval(CLOSE_SCRIPT, len(keys), *keys, chat_id, time.time(), how, self._record(""), RECORD_TTL_S)

    async def discard(self, chat_id: int) -> None:
        """Drop the open handoff without a record: it never reached the operators."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.delete(self._key(chat_id)).zrem(self.active, str(chat_id)).zrem(self.waiting, str(chat_id)).execute()

    async def position(self, chat_id: int) -> int | None:
        """Where this chat stands among the handoffs no operator has answered yet (1: next); None when not waiting."""
        rank = await self.redis.zrank(self.waiting, str(chat_id))
        return None if rank is None else rank + 1

    async def rate(self, record_id: str, user_id: int, rating: str) -> bool:
        """The customer's 1-5 rating of a handoff closed by /done; False (nothing changes) for another user's, an unknown
        or already rated record, another kind of close, or a value outside 1-5."""
        if rating not in RATINGS or not record_id.isdigit():
            return False
        return bool(await self.redis.eval(RATE_SCRIPT, 1, self._record(record_id), user_id, rating, time.time(), RATED_HOW))

    async def records(self, since: float) -> list[dict[str, str]]:
        """The records of handoffs closed since then, oldest first."""
        ids = await self.redis.zrangebyscore(self.closed, since, "+inf")
        async with self.redis.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hgetall(self._record(record_id))
            rows = await pipe.execute()
        return [row for row in rows if row]  # an expired one

    async def count_miss(self, chat_id: int) -> int:
        """A fallback or a 👎 in this chat: how many in a row now."""
        key = f"{self._key(chat_id)}:misses"
        async with self.redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, MISSES_TTL_S).execute()
        return count

    async def clear_misses(self, chat_id: int) -> None:
        await self.redis.delete(f"{self._key(chat_id)}:misses")

    async def idle(self) -> list[int]:
        return [int(c) for c in await self.redis.zrangebyscore(self.active, 0, time.time() - self.idle_s)]

    async def forget_chat(self, chat_id: int) -> None:
        """Everything about this chat's handoffs, including the links from the operators' messages and the records."""
        links = await self.redis.smembers(f"{self._key(chat_id)}:msgs")
        records = await self.redis.smembers(f"{self._key(chat_id)}:records")
        await self.discard(chat_id)
        keys = [f"{self.prefix}handoff:msg:{m}" for m in links] + [self._record(r) for r in records]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys, f"{self._key(chat_id)}:msgs", f"{self._key(chat_id)}:records", f"{self._key(chat_id)}:misses")
            if records:
                pipe.zrem(self.closed, *records)
            await pipe.execute()
