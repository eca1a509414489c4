"""Chats handed over to a human operator, in Redis: which chats are open, since when, their last question,
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

LINK_TTL_S = 7 * 24 * 3600


class Handoffs:
    def __init__(self, redis: Redis, prefix: str, idle_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.idle_s = idle_s
        self.active = f"{prefix}handoffs"  # sorted set: chat id -> time of the last message

    def _key(self, chat_id: int) -> str:
        return f"{self.prefix}handoff:{chat_id}"

    async def open(self, chat_id: int, user_id: int, question: str) -> bool:
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._key(chat_id), "user_id", user_id)
            pipe.hset(self._key(chat_id), mapping={"question": question, "opened": now})
            pipe.zadd(self.active, {str(chat_id): now})
            created, *_ = await pipe.execute()
        return bool(created)

    async def get(self, chat_id: int) -> dict[str, str] | None:
        state = await self.redis.hgetall(self._key(chat_id))
        return state or None

    async def touch(self, chat_id: int, question: str | None = None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            if question is not None:
                pipe.hset(self._key(chat_id), "question", question)
            pipe.zadd(self.active, {str(chat_id): time.time()}, xx=True)
            await pipe.execute()

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
