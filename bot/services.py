"""Everything a handler needs, opened once per process: Redis, the stores over it, the llmcore client,
the answer pipeline and the metrics. Kept in `application.bot_data.services`; handlers reach it as `context.kefu`
(bot/context.py).

    kefu = await Services.open(settings)      # bot.app.running() does this around PTB's start/stop
    ...
    await kefu.close()
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.encoder import load_encoder
from bot.exchanges import ExchangeLog
from bot.faq import FaqStore
from bot.guard import Guard
from bot.handoff import Handoffs
from bot.history import History
from bot.intake import UpdateStream
from bot.llm import LlmAdmin, LlmClient
from bot.metrics import BotMetrics
from bot.paraphrases import Paraphrases
from bot.pipeline import Pipeline
from bot.settings import BotSettings

REDIS_CONNECTIONS = 64


def redis_client(url: str) -> Redis:
    """The bot's Redis: short socket timeouts (a Redis that went away costs a user a second, not a hang); a bounded
    pool that makes a burst of updates wait for a connection instead of failing ("Too many connections"); the pool
    reconnects by itself, and a command on a connection Redis closed meanwhile (a restart) is sent once more on a
    fresh one instead of failing."""
    pool = BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS, timeout=5, decode_responses=True,
                                           socket_timeout=2, socket_connect_timeout=2, health_check_interval=15,
                                           retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=(RedisConnectionError,)))
    return Redis(connection_pool=pool)


@dataclass
class Services:
    settings: BotSettings
    redis: Redis
    history: History
    faq: FaqStore
    log: ExchangeLog
    guard: Guard
    llm: LlmClient
    pipeline: Pipeline
    metrics: BotMetrics
    handoffs: Handoffs
    admin: LlmAdmin
    intake: UpdateStream
    paraphrases: Paraphrases
    clock: Callable[[], float] = time.time  # the handoffs' and business hours' time (tests move it)

    @classmethod
    async def open(cls, settings: BotSettings, metrics: BotMetrics | None = None,
                   clock: Callable[[], float] = time.time) -> Services:
        redis = redis_client(settings.redis_url)
        p = settings.redis_prefix
        history = History(redis, p, settings.history_turns, settings.history_ttl_s)
        faq, log = FaqStore(redis, p, load_encoder(settings.faq_encoder)), ExchangeLog(redis, p, settings.log_retention_days)
        llm = LlmClient(settings.llmcore_url, settings.llmcore_timeout_s)
        await llm.start()
        token = settings.llmcore_admin_token.get_secret_value() if settings.llmcore_admin_token else None
        return cls(settings, redis, history, faq, log, Guard(redis, p, settings.rate_limit_per_minute), llm,
                   Pipeline(settings, history, faq, llm, log), metrics or BotMetrics(),
                   Handoffs(redis, p, settings.handoff_idle_s, clock), LlmAdmin(settings.llmcore_url, token),
                   UpdateStream(redis, p, settings.replica_name),
                   Paraphrases(redis, p, faq, settings.faq_auto_approve_taps, settings.faq_suggest), clock)

    async def close(self) -> None:
        await self.llm.close()
        await self.redis.aclose()

    async def forget_user(self, user_id: int) -> None:
        """Everything Kefu holds about this user: history turns, logged exchanges, ratings, rate-limit counters, handoffs."""
        await self.history.forget_user(user_id)
        await self.log.forget_user(user_id)
        await self.guard.forget_user(user_id)
        await self.handoffs.forget_chat(user_id)  # a private chat's id is the user's id
        await self.paraphrases.forget_user(user_id)  # their wordings proposed to the FAQ
