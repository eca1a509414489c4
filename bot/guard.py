"""What stops an update before any work is done: a duplicate `update_id` (webhook redelivery, several
replicas behind one webhook) and a user who writes faster than the per-minute limit.

    guard = Guard(redis, prefix="kefu:", per_minute=20)
    if not await guard.first_delivery(update.update_id): ...   # seen before: drop it
    verdict = await guard.admit(user_id)                        # "ok" | "notice" (tell them once) | "silent"
"""
from __future__ import annotations

import time

from redis.asyncio import Redis

DEDUPE_TTL_S = 24 * 3600  # Telegram redelivers for at most a day


class Guard:
    def __init__(self, redis: Redis, prefix: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute

    async def first_delivery(self, update_id: int) -> bool:
        return bool(await self.redis.set(f"{self.prefix}update:{update_id}", 1, nx=True, ex=DEDUPE_TTL_S))

    async def admit(self, user_id: int) -> str:
        """A fixed one-minute window per user: over the limit the first time → "notice", after that "silent"."""
        key = f"{self.prefix}rate:{user_id}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, 120).execute()
        if count <= self.per_minute:
            return "ok"
        return "notice" if count == self.per_minute + 1 else "silent"

    async def forget_user(self, user_id: int) -> None:
        keys = [key async for key in self.redis.scan_iter(f"{self.prefix}rate:{user_id}:*")]
        if keys:
            await self.redis.delete(*keys)
