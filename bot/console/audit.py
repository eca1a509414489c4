"""Every change made in the console, who made it and when: a capped Redis stream, shown on the audit page.

    audit = AuditLog(redis, prefix="kefu:")
    await audit.record(person, "faq.add", "#12", "营业时间？")
    rows = await audit.latest(200)      # newest first
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from bot.console.auth import Person

logger = logging.getLogger(__name__)
MAX_AUDIT_ENTRIES = 100_000
MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class AuditEntry:
    at: float
    user_id: int
    name: str
    role: str
    action: str
    target: str
    detail: str


class AuditLog:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.stream = f"{prefix}console:audit"

    async def record(self, person: Person, action: str, target: str = "", detail: str = "") -> None:
        fields = {"at": f"{time.time():.3f}", "user_id": str(person.user_id), "name": person.name, "role": person.role,
                  "action": action, "target": target, "detail": detail[:MAX_DETAIL_CHARS]}
        await self.redis.xadd(self.stream, fields, maxlen=MAX_AUDIT_ENTRIES, approximate=True)
        logger.info("audit: console user %s (%s) %s %s", person.user_id, person.role, action, target)

    async def latest(self, count: int = 200) -> list[AuditEntry]:
        rows = await self.redis.xrevrange(self.stream, count=count)
        return [AuditEntry(float(f["at"]), int(f["user_id"]), f["name"], f["role"], f["action"], f["target"], f["detail"])
                for _, f in rows]
