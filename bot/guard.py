"""What stops an update before any work is done: a user who writes faster than the per-minute limit.
(Duplicate deliveries never get this far: bot/intake.py drops them when they arrive.)

    guard = Guard(redis, prefix="kefu:", per_minute=20)
    verdict = await guard.admit(user_id)                        # "ok" | "notice" (tell them once) | "silent"
"""
from __future__ import annotations

import time

from redis.asyncio import Redis


class Guard:
    def __init__(self, redis: Redis, prefix: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute

    async def admit(self, user_id: int) -> str:
        """A fixed one-minute window per user: over the limit the first time → "notice", after that "silent"."""
        key = f"{self.prefix}rate:{user_id}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, 120).execute()
        if count <= self.per_minute:
            return "ok"
        return "notice" if count == self.per_minute + 1 else "silent"

    async def forget_user(self, user_id: int) -> None:
        """Their counts: this minute's and the last (a count lives 120 s), named, not searched for across the keyspace."""
        minute = int(time.time() // 60)
        await self.redis.delete(*(f"{self.prefix}rate:{user_id}:{m}" for m in (minute - 2, minute - 1, minute)))
