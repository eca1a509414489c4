"""The one error path (PTB's error handler, as in its errorhandlerbot example): whatever a handler or a job raises
lands in `on_error`, which logs it, tells the user or the admin what it means, and notifies the admins.

    application.add_error_handler(on_error)      # bot.app.build_application

    Redis away (RedisError)      a message is handled again once Redis answers (bot.intake) and its sender, in a private
                                 chat, is told "temporarily unavailable" once; a button gets that as an alert; a message
                                 whose answer is out already is not handled again (it would be answered twice)
    Telegram's API away          a message is handled again later (bot.intake): a 502 or a refused connection on the
      (NetworkError, RetryAfter)  answer lost it for good; not for a timeout (the answer may have arrived: it would come
                                 twice), nor a Bad Request (it would fail every time), nor once the answer is out
    llmcore's admin API          the admin who asked reads llmcore's reason (AdminError)
    Telegram refused             logged: the user cannot be reached anyway (blocked the bot, token revoked)
    anything else (a bug)        logged with the traceback; "something went wrong" in a private chat

Admins (ADMIN_IDS) hear of Redis outages and bugs: at most one notice per kind every ADMIN_NOTICE_EVERY_S, with no
secret (tokens and passwords blanked) and no customer text but the question, scrubbed of personal data.
"""
from __future__ import annotations

import contextlib
import logging
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from redis.exceptions import RedisError
from telegram import Update
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import Application, ApplicationHandlerStop

from bot.context import Context
from bot.llm import AdminError
from bot.pii import scrub
from bot.settings import BotSettings
from bot.texts import texts_for

logger = logging.getLogger(__name__)
ADMIN_NOTICE_EVERY_S = 600.0
MAX_TOLD = 10_000  # update ids remembered as told "temporarily unavailable"
MAX_QUOTED_CHARS = 300
MAX_ALERT_CHARS = 190  # a callback query's answer holds 200


async def on_error(update: object, context: Context) -> None:
    """Log, translate, notify: the one place where a handler's or a job's exception becomes words."""
    error, update = context.error, update if isinstance(update, Update) else None
    if isinstance(error, RedisError):
        logger.warning("Redis unavailable while handling %s: %s", _source(update, context), error)
        context.bot_data.metrics.errors.labels("redis").inc()
        await notify_admins(context, update, "redis", f"Redis unavailable ({_describe(error)})")
        if update is not None:
            await _redis_away(update, context)
            raise ApplicationHandlerStop  # the update's other handlers need Redis too: it comes back whole
    elif isinstance(error, AdminError):
        logger.warning("llmcore admin API while handling %s: %s", _source(update, context), error)
        await _tell(update, f"Not done: {error}", anywhere=True)
    elif isinstance(error, (Forbidden, InvalidToken, NetworkError, RetryAfter)):
        logger.warning("Telegram while handling %s: %s", _source(update, context), error)
        # not a timeout (the answer may have arrived: it would come twice), not a Bad Request (PTB's BadRequest is a
        # NetworkError: "message to be replied not found" once the customer deleted the question would fail every try)
        away = isinstance(error, NetworkError | RetryAfter) and not isinstance(error, TimedOut | BadRequest)
        if away and update is not None and update.callback_query is None and update.effective_message is not None:
            context.kefu.intake.retry_later(update.update_id)
    else:
        logger.error("error while handling %s", _source(update, context), exc_info=error)
        context.bot_data.metrics.errors.labels("bug").inc()
        await notify_admins(context, update, f"bug:{type(error).__name__}", f"Error: {_describe(error)}")
        if update is not None:
            await _tell(update, texts_for(update).error)


async def _redis_away(update: Update, context: Context) -> None:
    if update.callback_query is not None:  # a button is answered now or never: the user taps again later
        await _tell(update, texts_for(update).unavailable)
        return
    if context.kefu.intake.retry_later(update.update_id):  # not when its answer is out already
        await tell_unavailable(context.application, update)


async def tell_unavailable(application: Application, update: Update) -> None:
    """'Temporarily unavailable' to the sender of a private message, once per update however often it is tried."""
    told = application.bot_data.told_unavailable
    message = update.effective_message
    if update.update_id in told or message is None or message.chat.type != ChatType.PRIVATE or update.callback_query:
        return
    told[update.update_id] = True
    while len(told) > MAX_TOLD:
        told.popitem(last=False)
    with contextlib.suppress(TelegramError):
        await application.bot.send_message(message.chat_id, texts_for(update).unavailable)


async def notify_admins(context: Context, update: Update | None, kind: str, headline: str) -> None:
    """One notice per kind every ADMIN_NOTICE_EVERY_S to each admin, counting the ones held back meanwhile."""
    settings, notified = context.bot_data.settings, context.bot_data.notified
    now, last = time.monotonic(), notified.get(kind)
    if settings is None or not settings.admin_ids or (last is not None and now - last < ADMIN_NOTICE_EVERY_S):
        return
    notified[kind] = now
    lines = [f"⚠️ {headline}", f"while handling {_source(update, context)}"]
    question = update.effective_message.text if update is not None and update.effective_message else None
    if question:
        lines.append(f"question (scrubbed): {scrub(question)[:MAX_QUOTED_CHARS]}")
    lines.append(f"The next notice of this kind comes in {ADMIN_NOTICE_EVERY_S / 60:g} minutes at the earliest; see the logs.")
    text = redact("\n".join(lines), settings)
    for admin_id in settings.admin_ids:
        with contextlib.suppress(TelegramError):  # an admin who never opened the bot cannot be written to
            await context.bot.send_message(admin_id, text)


def redact(text: str, settings: BotSettings) -> str:
    """The text with every secret of the settings blanked: bot token, llmcore admin token, webhook secret, Redis password."""
    secrets = [s.get_secret_value() for s in (settings.telegram_bot_token, settings.llmcore_admin_token, settings.webhook_secret) if s]
    secrets.append(urlsplit(settings.redis_url).password or "")
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def _tell(update: Update | None, text: str, anywhere: bool = False) -> None:
    """A button's alert, or a message in a private chat (`anywhere`: in any chat; an admin asked there)."""
    if update is None:
        return
    with contextlib.suppress(TelegramError):
        if update.callback_query is not None:
            await update.callback_query.answer(text[:MAX_ALERT_CHARS], show_alert=True)
        elif update.effective_message and (anywhere or update.effective_message.chat.type == ChatType.PRIVATE):
            await update.effective_message.reply_text(text)


def _describe(error: BaseException) -> str:
    """The error's type, message (scrubbed, short) and the innermost line of Kefu's code it came through."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).parent.name == "bot"]
    where = f" at bot/{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {scrub(str(error))[:MAX_QUOTED_CHARS]}{where}"


def _source(update: Update | None, context: Context) -> str:
    if update is None:
        return f"job {context.job.name}" if context.job is not None else "no update"
    kind = "button" if update.callback_query is not None else "message"
    chat = update.effective_chat
    return f"update {update.update_id} ({kind}, {chat.type if chat else 'no'} chat)"

