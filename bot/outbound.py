"""Outbound Bot API calls: answers first. PTB's AIORateLimiter (Telegram's flood limits, retries on 429) for
everything, with the decorations — the typing action and answer drafts — best-effort:

- while DECORATION_MAX_QUEUE calls or more are waiting in the limiter or on their way, a decoration is skipped
  (it reports success: nothing is waiting for it), so under a burst the limiter's rate goes to answers;
- a decoration that hits a 429 is dropped, not retried (a retry would hold the limiter for every answer).

    builder.rate_limiter(AnswersFirst(overall_max_rate=30, max_retries=3))
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter

logger = logging.getLogger(__name__)
DECORATIONS = frozenset({"sendChatAction", "sendMessageDraft"})
DECORATION_MAX_QUEUE = 8


class AnswersFirst(AIORateLimiter):
    def __init__(self, max_queue: int = DECORATION_MAX_QUEUE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_queue = max_queue
        self.outstanding = 0  # calls in the limiter or on their way to Telegram
        self.skipped = 0

    async def process_request(self, callback: Callable[..., Coroutine[Any, Any, Any]], args: Any, kwargs: dict[str, Any],
                              endpoint: str, data: dict[str, Any], rate_limit_args: int | None) -> Any:
        decoration = endpoint in DECORATIONS
        if decoration and self.outstanding >= self.max_queue:
            self.skipped += 1
            return True
        self.outstanding += 1
        try:
            return await super().process_request(_best_effort(callback) if decoration else callback, args, kwargs,
                                                 endpoint, data, rate_limit_args)
        finally:
            self.outstanding -= 1


def _best_effort(callback: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await callback(*args, **kwargs)
        except RetryAfter as exc:
            logger.debug("decoration dropped: %s", exc)
            return True
    return call
