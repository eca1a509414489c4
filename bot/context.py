"""What every handler, job and error handler gets: a typed context (PTB's ContextTypes, as in its contexttypesbot
example) whose `kefu` is the process's Services, and typed `bot_data` instead of string keys.

    application = ApplicationBuilder().context_types(CONTEXT_TYPES)...build()   # bot.app.build_application

    async def reset(update: Update, context: Context) -> None:
        await context.kefu.history.clear(update.effective_chat.id)

    if not await context.admin_pressed(update.callback_query):   # an admin-only button: anyone else is refused
        return
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from telegram import CallbackQuery
from telegram.ext import CallbackContext, ContextTypes, ExtBot

from bot.metrics import BotMetrics
from bot.services import Services
from bot.settings import BotSettings

logger = logging.getLogger(__name__)


@dataclass
class BotData:
    """`application.bot_data`: settings and metrics from build_application; services while running (bot.app.running)."""

    settings: BotSettings | None = None
    metrics: BotMetrics = field(default_factory=BotMetrics)
    services: Services | None = None
    clock: Callable[[], float] = time.time  # what the services tell time by (a test sets its own before starting)
    told_unavailable: OrderedDict[int, bool] = field(default_factory=OrderedDict)  # update ids (bot.errors)
    notified: dict[str, float] = field(default_factory=dict)  # admin notice kind -> when last sent (bot.errors)


class Context(CallbackContext[ExtBot[None], dict, dict, BotData]):
    """PTB's CallbackContext with Kefu's services on it."""

    @property
    def kefu(self) -> Services:
        services = self.bot_data.services
        if services is None:
            raise RuntimeError("Kefu's services are not open: handlers run inside bot.app.running()")
        return services

    async def admin_pressed(self, query: CallbackQuery) -> bool:
        """A button only admins may press: anyone else gets "Not allowed." and an audit line."""
        if query.from_user.id in self.kefu.settings.admin_ids:
            return True
        logger.warning("audit: user %s pressed %s: not an admin", query.from_user.id, query.data)
        await query.answer("Not allowed.", show_alert=True)
        return False


CONTEXT_TYPES = ContextTypes(context=Context, bot_data=BotData)
