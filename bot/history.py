"""Dialogue history per chat in Redis: a capped list of turns that expires when the chat goes quiet.

    history = History(redis, prefix="kefu:", max_turns=20, ttl_s=7 * 86400)
    await history.append(chat_id, user_id, question, answer)   # one pipeline: push, trim, expire
    turns = await history.recent(chat_id, 6)                    # [{"role": "user", "content": ...}, ...]
    turns = await history.recent(chat_id, 6, user_id)           # that user's own exchanges in the chat only

Each turn remembers who wrote it, so `/forget` can take one user's turns out of a group's history, and the model is
shown the asker's own earlier turns in a group (another member's, with whatever they wrote, were its context).
"""
from __future__ import annotations

import json

from redis.asyncio import Redis


class History:
    def __init__(self, redis: Redis, prefix: str, max_turns: int, ttl_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_turns = max_turns
        self.ttl_s = ttl_s

    def key(self, chat_id: int) -> str:
        return f"{self.prefix}hist:{chat_id}"

    async def append(self, chat_id: int, user_id: int, question: str, answer: str) -> None:
        turns = [json.dumps({"role": "user", "content": question, "uid": user_id}, ensure_ascii=False),
                 json.dumps({"role": "assistant", "content": answer, "uid": user_id}, ensure_ascii=False)]
        key = self.key(chat_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *turns).ltrim(key, -self.max_turns, -1).expire(key, self.ttl_s)
            pipe.sadd(self._chats_key(user_id), chat_id).expire(self._chats_key(user_id), self.ttl_s)
            await pipe.execute()

    async def recent(self, chat_id: int, count: int, user_id: int | None = None) -> list[dict[str, str]]:
        """The last `count` turns of the chat; with `user_id`, of that user's exchanges only (searched among the last
        max_turns)."""
        if count <= 0:
            return []
        if user_id is None:
            turns = list(map(json.loads, await self.redis.lrange(self.key(chat_id), -count, -1)))
        else:
            turns = [t for t in map(json.loads, await self.redis.lrange(self.key(chat_id), -self.max_turns, -1))
                     if t.get("uid") == user_id][-count:]
        return [{"role": t["role"], "content": t["content"]} for t in turns]

    async def clear(self, chat_id: int) -> None:
        await self.redis.delete(self.key(chat_id))

    async def forget_user(self, user_id: int) -> None:
        """Remove every turn this user wrote (or was answered) in any chat."""
        for chat in await self.redis.smembers(self._chats_key(user_id)):
            key = self.key(int(chat))
            for raw in await self.redis.lrange(key, 0, -1):
                if json.loads(raw).get("uid") == user_id:
                    await self.redis.lrem(key, 0, raw)
        await self.redis.delete(self._chats_key(user_id), self.key(user_id))  # a private chat's id is the user's id

    def _chats_key(self, user_id: int) -> str:
        return f"{self.prefix}user:{user_id}:chats"
