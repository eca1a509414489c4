"""Chats handed over to a human operator, in Redis: which chats are open, since when, their last question (scrubbed),
and which message in the operators' group belongs to which chat (an operator answers by replying to it).

    handoffs = Handoffs(redis, prefix="kefu:", idle_s=1800)
    if await handoffs.open(chat_id, user_id, question): ...   # False when it already was
    await handoffs.link(operator_message_id, chat_id)          # a reply to that message goes to chat_id
    chat_id = await handoffs.chat_for(operator_message_id)
    for chat_id in await handoffs.idle(): ...                  # open with no message for idle_s
"""
from __future__ import annotations

import time

from redis.asyncio import Redis

from bot.pii import scrub

LINK_TTL_S = 7 * 24 * 3600
# atomic, so that a handoff closed meanwhile (by /done, /end, the idle sweep) is not brought back half-made
OPEN_SCRIPT = """
if redis.call('hsetnx', KEYS[1], 'user_id', ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'question', ARGV[2], 'opened', ARGV[3])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
return 1
"""
TOUCH_SCRIPT = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('hset', KEYS[1], 'question', ARGV[1]) end
redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


class Handoffs:
    def __init__(self, redis: Redis, prefix: str, idle_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.idle_s = idle_s
        self.active = f"{prefix}handoffs"  # sorted set: chat id -> time of the last message

    def _key(self, chat_id: int) -> str:
        return f"{self.prefix}handoff:{chat_id}"

    async def open(self, chat_id: int, user_id: int, question: str) -> bool:
        """Open a handoff; False (and nothing changes) when one is open already."""
        opened = await self.redis.eval(OPEN_SCRIPT, 2, self._key(chat_id), self.active, user_id, scrub(question), time.time(), chat_id)
        return bool(opened)

    async def get(self, chat_id: int) -> dict[str, str] | None:
        state = await self.redis.hgetall(self._key(chat_id))
        return state if "user_id" in state else None

    async def touch(self, chat_id: int, question: str | None = None) -> None:
        """A message in an open handoff: its time (for the idle close), and the user's latest question; nothing if closed."""
        await self.redis.eval(TOUCH_SCRIPT, 2, self._key(chat_id), self.active, "" if question is None else scrub(question),
                              time.time(), chat_id)

    async def link(self, operator_message_id: int, chat_id: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}handoff:msg:{operator_message_id}", chat_id, ex=LINK_TTL_S)
            pipe.sadd(f"{self._key(chat_id)}:msgs", operator_message_id).expire(f"{self._key(chat_id)}:msgs", LINK_TTL_S)
            await pipe.execute()

    async def chat_for(self, operator_message_id: int) -> int | None:
        chat = await self.redis.get(f"{self.prefix}handoff:msg:{operator_message_id}")
        return int(chat) if chat is not None else None

    async def close(self, chat_id: int) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(chat_id)).zrem(self.active, str(chat_id))
            removed, _ = await pipe.execute()
        return bool(removed)

    async def idle(self) -> list[int]:
        return [int(c) for c in await self.redis.zrangebyscore(self.active, 0, time.time() - self.idle_s)]

    async def forget_chat(self, chat_id: int) -> None:
        """Everything about this chat's handoffs, including the links from the operators' messages."""
        links = await self.redis.smembers(f"{self._key(chat_id)}:msgs")
        await self.close(chat_id)
        keys = [f"{self.prefix}handoff:msg:{m}" for m in links] + [f"{self._key(chat_id)}:msgs"]
        await self.redis.delete(*keys)
