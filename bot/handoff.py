"""Chats handed over to a human operator, in Redis: which chats are open, since when, their last question (scrubbed),
which operator claimed each, and which message in the operators' group belongs to which chat (an operator answers by
replying to it). A handoff opened outside business hours is held, with the messages the customer leaves, until it
is released to the operators. A closed handoff leaves a record (opened, first operator reply, closed, how, the
operator, the customer's 1-5 rating and comment) for /stats and /export, and a chat counts its fallbacks and 👎 in
a row (the bot offers a colleague after HANDOFF_AFTER_FALLBACKS). Times come from `clock` (tests move it).

    handoffs = Handoffs(redis, prefix="kefu:", idle_s=1800, clock=time.time)
    if await handoffs.open(chat_id, user_id, question): ...   # False when it already was
    await handoffs.open(chat_id, user_id, question, held=True)  # outside hours: not with the operators yet
    await handoffs.leave_note(chat_id, text); await handoffs.notes(chat_id)
    for chat_id in await handoffs.held(): await handoffs.release(chat_id)   # True for the one caller that releases it
    claim = await handoffs.claim(chat_id, operator_id, "Ann")  # Claim(first, operator_id, name); None when closed
    await handoffs.link(operator_message_id, chat_id)          # a reply to that message goes to chat_id
    chat_id = await handoffs.chat_for(operator_message_id)
    await handoffs.touch(chat_id, replied=True)                # an operator answered (the first time is kept)
    await handoffs.position(chat_id)                           # 3: two opened earlier wait for their first answer too
    for chat_id in await handoffs.idle(): ...                  # open with no message for idle_s
    record_id = await handoffs.close(chat_id, "done")          # None when none was open
    await handoffs.rate(record_id, user_id, "5")               # False (nothing changes) unless it is the customer's to rate
    await handoffs.comment(chat_id, user_id, text)             # the message after a rating, within COMMENT_WINDOW_S
    await handoffs.records(since)                              # closed since then, with their ratings
    await handoffs.count_miss(chat_id); await handoffs.clear_misses(chat_id)
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from redis.asyncio import Redis

from bot.pii import scrub

LINK_TTL_S = 7 * 24 * 3600
RECORD_TTL_S = 90 * 24 * 3600  # closed handoffs and their ratings, for /stats
MISSES_TTL_S = 24 * 3600  # fallbacks in a row a day apart are not one bad conversation
RATINGS = ("1", "2", "3", "4", "5")
RATED_HOW = "done"  # only a handoff an operator closed with /done asks the customer for a rating
COMMENT_WINDOW_S = 5 * 60  # after a rating, the customer's next message in this time is their comment
MAX_COMMENT_CHARS = 1000
MAX_NOTES = 20  # messages a customer leaves outside business hours, the latest kept
# atomic, so that a handoff closed meanwhile (by /done, /end, the idle sweep) is not brought back half-made
OPEN_SCRIPT = """
if redis.call('hsetnx', KEYS[1], 'user_id', ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'question', ARGV[2], 'opened', ARGV[3], 'lang', ARGV[5], 'who', ARGV[7])
if ARGV[6] == '1' then
  redis.call('hset', KEYS[1], 'held', '1')
  redis.call('zadd', KEYS[4], ARGV[3], ARGV[4])
else
  redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
end
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
# a held handoff goes to the operators once, however many replicas sweep
RELEASE_SCRIPT = """
if redis.call('hdel', KEYS[1], 'held') == 0 then return 0 end
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
return 1
"""
# the first operator to claim (or answer) has the chat: two racing, exactly one gets it
CLAIM_SCRIPT = """
if redis.call('exists', KEYS[1]) == 0 then return false end
if redis.call('hsetnx', KEYS[1], 'operator', ARGV[1]) == 1 then
  redis.call('hset', KEYS[1], 'operator_name', ARGV[2])
  return {1, ARGV[1], ARGV[2]}
end
local holder = redis.call('hmget', KEYS[1], 'operator', 'operator_name')
return {0, holder[1], holder[2]}
"""
TOUCH_SCRIPT = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('hset', KEYS[1], 'question', ARGV[1]) end
if ARGV[4] == '1' then
  redis.call('hsetnx', KEYS[1], 'first_reply', ARGV[2])
  redis.call('zrem', KEYS[3], ARGV[3])
end
if redis.call('hexists', KEYS[1], 'held') == 0 then redis.call('zadd', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""
# the open handoff becomes a record in one step: /done, /end and the idle sweep may race, and only one of them records it
CLOSE_SCRIPT = """
local state = redis.call('hmget', KEYS[1], 'user_id', 'opened', 'first_reply', 'operator_name')
if not state[1] then return false end
local id = tostring(redis.call('incr', KEYS[5]))
local record = ARGV[4] .. id
redis.call('hset', record, 'chat_id', ARGV[1], 'user_id', state[1], 'opened', state[2], 'closed', ARGV[2], 'how', ARGV[3])
if state[3] then redis.call('hset', record, 'first_reply', state[3]) end
if state[4] then redis.call('hset', record, 'operator', state[4]) end
redis.call('expire', record, ARGV[5])
redis.call('zadd', KEYS[3], ARGV[2], id)
redis.call('zremrangebyscore', KEYS[3], '-inf', ARGV[2] - ARGV[5])
redis.call('sadd', KEYS[4], id)
redis.call('expire', KEYS[4], ARGV[5])
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[6], ARGV[1])
redis.call('zrem', KEYS[7], ARGV[1])
redis.call('del', KEYS[8])
return id
"""
RATE_SCRIPT = """
local state = redis.call('hmget', KEYS[1], 'user_id', 'how', 'rating', 'chat_id')
if state[1] ~= ARGV[1] or state[2] ~= ARGV[4] or state[3] then return false end
redis.call('hset', KEYS[1], 'rating', ARGV[2], 'rated', ARGV[3])
return state[4]
"""
# the comment window is taken by the customer's next message: a comment, or (too late, or someone else) nothing
COMMENT_SCRIPT = """
local pending = redis.call('get', KEYS[1])
if not pending then return 0 end
local sep = string.find(pending, ':', 1, true)
local record = ARGV[3] .. string.sub(pending, 1, sep - 1)
if redis.call('hget', record, 'user_id') ~= ARGV[2] then return 0 end
redis.call('del', KEYS[1])
if tonumber(string.sub(pending, sep + 1)) < tonumber(ARGV[1]) then return 0 end
redis.call('hset', record, 'comment', ARGV[4])
return 1
"""


class Claim(NamedTuple):
    first: bool  # this call claimed it
    operator_id: int  # who has the chat
    name: str


class Handoffs:
    def __init__(self, redis: Redis, prefix: str, idle_s: int, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.idle_s = idle_s
        self.clock = clock
        self.active = f"{prefix}handoffs"  # sorted set: chat id -> time of the last message
        self.closed = f"{prefix}handoffs:closed"  # sorted set: record id -> time it closed
        self.waiting = f"{prefix}handoffs:waiting"  # sorted set: chat id -> time opened, until an operator answers
        self.holding = f"{prefix}handoffs:held"  # sorted set: chat id -> time opened, while outside business hours

    def _key(self, chat_id: int) -> str:
        return f"{self.prefix}handoff:{chat_id}"

    async def open(self, chat_id: int, user_id: int, question: str, lang: str = "zh", held: bool = False, who: str = "") -> bool:
        """Open a handoff (`lang`: the customer's, for what the bot tells them; `held`: outside business hours, not with
        the operators until released; `who`: how operators see the customer, kept while it is open); False (and nothing
        changes) when one is open already."""
        keys = (self._key(chat_id), self.active, self.waiting, self.holding)
        opened = await self.redis.eval(OPEN_SCRIPT, len(keys), *keys, user_id, scrub(question), self.clock(), chat_id, lang,
                                       "1" if held else "", who)
        return bool(opened)

    async def held(self) -> list[int]:
        """Chats whose handoff waits for business hours, the earliest first."""
        return [int(c) for c in await self.redis.zrange(self.holding, 0, -1)]

    async def release(self, chat_id: int) -> bool:
        """The held handoff goes to the operators now; True for the one caller that releases it."""
        released = await self.redis.eval(RELEASE_SCRIPT, 3, self._key(chat_id), self.active, self.holding, chat_id, self.clock())
        return bool(released)

    async def leave_note(self, chat_id: int, text: str) -> None:
        """A message the customer left while the handoff is held (kept as written: the operators read it)."""
        key = f"{self._key(chat_id)}:notes"
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.rpush(key, text).ltrim(key, -MAX_NOTES, -1).expire(key, LINK_TTL_S).execute()

    async def notes(self, chat_id: int) -> list[str]:
        return await self.redis.lrange(f"{self._key(chat_id)}:notes", 0, -1)

    async def claim(self, chat_id: int, operator_id: int, name: str) -> Claim | None:
        """The first operator to claim the open handoff has it (atomic: of two racing, one wins); None when closed."""
        found = await self.redis.eval(CLAIM_SCRIPT, 1, self._key(chat_id), operator_id, name)
        return None if found is None else Claim(found[0] == 1, int(found[1]), found[2] or "")

    async def get(self, chat_id: int) -> dict[str, str] | None:
        state = await self.redis.hgetall(self._key(chat_id))
        return state if "user_id" in state else None

    def _record(self, record_id: str) -> str:
        return f"{self.prefix}handoff:record:{record_id}"

    async def touch(self, chat_id: int, question: str | None = None, replied: bool = False) -> None:
        """A message in an open handoff: its time (for the idle close), the user's latest question, and when an operator
        first answered (`replied`); nothing if closed."""
        await self.redis.eval(TOUCH_SCRIPT, 3, self._key(chat_id), self.active, self.waiting, "" if question is None else scrub(question),
                              self.clock(), chat_id, "1" if replied else "")

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
                self.waiting, self.holding, f"{self._key(chat_id)}:notes")
        return await self.redis.eval(CLOSE_SCRIPT, len(keys), *keys, chat_id, self.clock(), how, self._record(""), RECORD_TTL_S)

    async def discard(self, chat_id: int) -> None:
        """Drop the open handoff without a record: it never reached the operators."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(chat_id), f"{self._key(chat_id)}:notes")
            await pipe.zrem(self.active, str(chat_id)).zrem(self.waiting, str(chat_id)).zrem(self.holding, str(chat_id)).execute()

    async def position(self, chat_id: int) -> int | None:
        """Where this chat stands among the handoffs no operator has answered yet (1: next); None when not waiting."""
        rank = await self.redis.zrank(self.waiting, str(chat_id))
        return None if rank is None else rank + 1

    async def rate(self, record_id: str, user_id: int, rating: str) -> bool:
        """The customer's 1-5 rating of a handoff closed by /done; False (nothing changes) for another user's, an unknown
        or already rated record, another kind of close, or a value outside 1-5."""
        if rating not in RATINGS or not record_id.isdigit():
            return False
        chat_id = await self.redis.eval(RATE_SCRIPT, 1, self._record(record_id), user_id, rating, self.clock(), RATED_HOW)
        if chat_id is None:
            return False
        await self.redis.set(f"{self._key(chat_id)}:comment", f"{record_id}:{self.clock() + COMMENT_WINDOW_S}",
                             ex=COMMENT_WINDOW_S + 60)  # the deadline, by the clock, decides; the expiry only tidies up
        return True

    async def comment(self, chat_id: int, user_id: int, text: str) -> bool:
        """The customer's message right after their rating (within COMMENT_WINDOW_S) is stored with it, scrubbed; False
        (and the message is the bot's to answer) when no comment is expected from them."""
        return bool(await self.redis.eval(COMMENT_SCRIPT, 1, f"{self._key(chat_id)}:comment", self.clock(), user_id,
                                          self._record(""), scrub(text)[:MAX_COMMENT_CHARS]))

    async def skip_comment(self, chat_id: int) -> None:
        await self.redis.delete(f"{self._key(chat_id)}:comment")

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
        return [int(c) for c in await self.redis.zrangebyscore(self.active, 0, self.clock() - self.idle_s)]

    async def forget_chat(self, chat_id: int) -> None:
        """Everything about this chat's handoffs, including the links from the operators' messages and the records."""
        links = await self.redis.smembers(f"{self._key(chat_id)}:msgs")
        records = await self.redis.smembers(f"{self._key(chat_id)}:records")
        await self.discard(chat_id)
        keys = [f"{self.prefix}handoff:msg:{m}" for m in links] + [self._record(r) for r in records]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys, f"{self._key(chat_id)}:msgs", f"{self._key(chat_id)}:records", f"{self._key(chat_id)}:misses",
                        f"{self._key(chat_id)}:comment")
            if records:
                pipe.zrem(self.closed, *records)
            await pipe.execute()
