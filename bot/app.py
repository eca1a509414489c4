"""Builds the PTB Application and runs it: long polling, or a webhook behind our aiohttp server.

    application = build_application(settings)
    await run_polling(application)           # or: await run_webhook(application, settings)

`running(application)` opens Redis and the llmcore session around PTB's own start and stop, and consumes the
update stream (bot/intake.py): the webhook and the polling loop only store updates there (`receive`), durably,
before Telegram is told they arrived; the consumer hands them to PTB. Updates of different chats are handled
concurrently; those of one chat in arrival order (PerChatOrder).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import signal
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from redis.exceptions import RedisError
from telegram import Update
from telegram.error import EndPointNotFound, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import Application, ApplicationBuilder, BaseUpdateProcessor
from telegram.request import BaseRequest
from telegram.warnings import PTBUserWarning

from bot import admin, handlers
from bot.context import CONTEXT_TYPES
from bot.errors import on_error, tell_unavailable
from bot.intake import storable
from bot.metrics import BotMetrics
from bot.outbound import AnswersFirst
from bot.services import Services
from bot.settings import BotSettings

logger = logging.getLogger(__name__)
MAX_CONCURRENT_UPDATES = 256
CONNECTION_POOL_SIZE = 32
POOL_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 30  # long-polling: Telegram holds getUpdates open this long when there is nothing
POLL_RETRY_S = (0.5, 10.0)  # back-off after a failed getUpdates, or while updates cannot be stored: first, last
START_RETRY_S = (0.5, 30.0)  # back-off while the Bot API cannot be reached at start: first, last


class PerChatOrder(BaseUpdateProcessor):
    """Concurrency across chats, order within a chat. An update takes its chat's place in line the moment it arrives,
    before anything is awaited, and runs once the update before it has run or been refused. It is screened meanwhile
    (`screen`: bot.handlers.admitted, the rate limit, a Redis round trip that may answer a later update first); one
    that does not pass returns at once, never waiting for its turn (a burst would hold every intake slot), and the
    chat's next update then waits only for the ones before it. The line is dropped when the chat goes idle."""

    def __init__(self, max_concurrent_updates: int = MAX_CONCURRENT_UPDATES,
                 screen: Callable[[Update], Awaitable[bool]] | None = None) -> None:
        super().__init__(max_concurrent_updates)
        self.screen = screen
        self._tails: dict[int, asyncio.Future] = {}  # each chat's last update in line: done once it ran or was refused

    async def do_process_update(self, update: object, coroutine: Awaitable) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        ahead = mine = None
        if chat is not None:  # in line now, in arrival order: nothing has been awaited yet
            ahead, mine = self._tails.get(chat.id), asyncio.get_running_loop().create_future()
            self._tails[chat.id] = mine
            mine.add_done_callback(functools.partial(self._leave, chat.id))
        started = False
        try:
            if self.screen is not None and isinstance(update, Update) and not await self.screen(update):
                return
            if ahead is not None and not ahead.done():
                await asyncio.wait({ahead})  # not `await ahead`: cancelling this task must not cancel the one ahead
            started = True
            await coroutine
        finally:
            if not started and inspect.iscoroutine(coroutine):
                coroutine.close()  # refused, or cancelled before its turn: never awaited
            if mine is not None:
                _after(ahead, mine)

    def _leave(self, chat_id: int, done: asyncio.Future) -> None:
        if self._tails.get(chat_id) is done:
            del self._tails[chat_id]

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def _after(ahead: asyncio.Future | None, mine: asyncio.Future) -> None:
    """Mark `mine` done once `ahead` is (at once when there is none, or it is done): a chat's next update never
    overtakes the one before this."""
    def finish(_: object = None) -> None:
        if not mine.done():
            mine.set_result(None)

    if ahead is None or ahead.done():
        finish()
    else:
        ahead.add_done_callback(finish)


def build_application(settings: BotSettings, token: str | None = None, request: BaseRequest | None = None,
                      metrics: BotMetrics | None = None) -> Application:
    """`request` replaces the HTTP layer (the terminal shell answers Bot API calls itself)."""
    token = token or (settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else None)
    if not token:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set (without it, try `python -m bot shell`)")

    builder = (ApplicationBuilder().token(token).base_url(f"{settings.telegram_api_base}/bot")
               .base_file_url(f"{settings.telegram_api_base}/file/bot")
               .concurrent_updates(order := PerChatOrder()).context_types(CONTEXT_TYPES))
    if request is not None:
        builder = builder.request(request).get_updates_request(request)
    else:  # Telegram's flood limits (0: none, for a self-hosted Bot API server), retries on retry_after, answers first
        builder = builder.rate_limiter(AnswersFirst(overall_max_rate=settings.outbound_per_second, max_retries=3))
        # httpcore scans every pooled connection for every request: PTB's 256 cost more CPU than they save
        # (bench/bot.py); a request waits for a free connection instead of failing after PTB's 1 s
        builder = builder.connection_pool_size(CONNECTION_POOL_SIZE).pool_timeout(POOL_TIMEOUT_S)
    application = builder.build()
    order.screen = functools.partial(handlers.admitted, application)
    application.bot_data.settings = settings
    application.bot_data.metrics = metrics or BotMetrics()
    admin.register(application, settings.admin_ids)  # first: admin commands must not reach "unknown command"
    handlers.register(application, settings.operator_chat_id)
    application.add_error_handler(on_error)  # the one error path: bot/errors.py
    return application


@contextlib.asynccontextmanager
async def running(application: Application) -> AsyncIterator[Services]:
    """Initialize PTB, open Redis and the llmcore session, seed the FAQ, register the commands, start PTB and the
    update stream's consumer; undo all of it on exit, however it comes (a failure after start-up included)."""
    data = application.bot_data
    await _reach_telegram(application)
    async with application:  # (initialized by now); shutdown on the way out
        kefu = await Services.open(data.settings, data.metrics, data.clock)
        data.services = kefu
        try:
            await _seed_faq(kefu)
            await handlers.set_commands(application)
            await admin.set_commands(application, data.settings.admin_ids, data.settings.console_url)
            await application.start()
            try:
                await admin.resume(application, kefu)
                async with _consuming(application, kefu):
                    yield kefu
            finally:  # stopped before the shutdown, or it fails with "This Application is still running!"
                await application.stop()
        finally:
            data.services = None
            await kefu.close()


async def _reach_telegram(application: Application) -> None:
    """PTB's initialize (getMe), again and again while the Bot API cannot be reached: a bot started beside it (compose, a
    reboot, a network that is not up yet) waits for it rather than exiting. A wrong token still ends it at once."""
    delay = START_RETRY_S[0]
    while True:
        try:
            await application.initialize()
            return
        except NetworkError as exc:  # TimedOut included; InvalidToken is not one
            logger.warning("the Bot API at %s cannot be reached (%s); trying again in %.1f s",
                           application.bot_data.settings.telegram_api_base, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, START_RETRY_S[1])


@contextlib.asynccontextmanager
async def _consuming(application: Application, kefu: Services) -> AsyncIterator[None]:
    """The update stream's entries handed to PTB; on exit, what was read is finished (answered, logged, acknowledged)."""
    stop = asyncio.Event()
    consumer = asyncio.create_task(kefu.intake.consume(lambda data: handle_update(application, data), stop))
    try:
        yield
    finally:
        stop.set()
        await consumer


async def _seed_faq(kefu: Services) -> None:
    try:
        seeded = await kefu.faq.load_demo_if_empty()
    except RedisError as exc:  # Redis may come later; the bot still starts and says "temporarily unavailable"
        logger.warning("could not check the FAQ (Redis: %s)", exc)
        return
    if seeded:
        logger.info("the FAQ was empty: loaded %d demo entries", seeded)
    try:
        await kefu.faq.warm_up()
    except RedisError as exc:
        logger.warning("could not build the FAQ index yet (Redis: %s)", exc)


async def run_polling(application: Application, stop: asyncio.Event | None = None) -> None:
    """Long polling until SIGINT/SIGTERM (or until `stop` is set). The offset moves past an update only once it
    is stored: a crash, or Redis going away, loses nothing (Telegram keeps unconfirmed updates for a day)."""
    async with running(application):
        await application.bot.delete_webhook()
        logger.info("polling as @%s", application.bot.username)
        poller = asyncio.create_task(_poll(application))
        try:
            await _until_signal(stop, poller)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller  # raises what ended it early (InvalidToken: the token was revoked)


async def _poll(application: Application) -> None:
    offset, delay = None, POLL_RETRY_S[0]
    while True:
        try:
            updates = await _fetch_updates(application, offset)
        except TimedOut:
            continue
        except RetryAfter as exc:
            await asyncio.sleep(float(exc.retry_after.total_seconds() if hasattr(exc.retry_after, "total_seconds")
                                      else exc.retry_after))
            continue
        except InvalidToken:
            raise
        except TelegramError as exc:  # NetworkError and the rest: try again
            logger.warning("getUpdates failed (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_RETRY_S[1])
            continue
        delay = POLL_RETRY_S[0]
        for update in updates:
            if not isinstance(update, _Skipped) and not await receive(application, update, update.to_dict()):
                await asyncio.sleep(delay)  # Redis is away: ask Telegram again for the same updates later
                delay = min(delay * 2, POLL_RETRY_S[1])
                break
            offset = update.update_id + 1


async def _fetch_updates(application: Application, offset: int | None) -> list:
    """One getUpdates; when PTB cannot read an update of the batch, the batch read again update by update."""
    try:
        return list(await application.bot.get_updates(offset=offset, timeout=POLL_TIMEOUT_S, allowed_updates=Update.ALL_TYPES))
    except TelegramError:
        raise
    except Exception as exc:  # PTB could not read an update: each on its own, the unreadable ones skipped
        logger.warning("getUpdates returned an update PTB cannot read (%s: %s); reading them one by one", type(exc).__name__, exc)
        return await _readable_updates(application, offset)


async def _readable_updates(application: Application, offset: int | None) -> list:
    """The same batch of getUpdates as raw data, each update read on its own: an update PTB cannot read (fields
    missing, nested deeper than it can follow) becomes a `_Skipped(update_id)`, counted and logged, so that the offset
    moves past it instead of stopping the intake on it for good (Telegram would send it again on every poll)."""
    with warnings.catch_warnings():  # "use Bot.get_updates": that is what could not read them
        warnings.simplefilter("ignore", PTBUserWarning)
        try:
            raw = await application.bot.do_api_request("get_updates", api_kwargs={
                "offset": offset, "timeout": 0, "allowed_updates": list(Update.ALL_TYPES)})
        except EndPointNotFound as exc:  # getUpdates exists: this is how an initialized bot hears its token is refused
            raise InvalidToken(str(exc)) from exc
    batch: list = []
    for item in raw if isinstance(raw, list) else []:
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if not isinstance(update_id, int):
            continue
        try:
            batch.append(Update.de_json(item, application.bot))
        except Exception as exc:
            logger.warning("skipped update %s that PTB cannot read: %s: %s", update_id, type(exc).__name__, exc)
            count_update(application, "unreadable")
            batch.append(_Skipped(update_id))
    return batch


class _Skipped(NamedTuple):
    update_id: int


def count_update(application: Application, outcome: str) -> None:
    """One update received, by outcome (kefu_bot_updates): received, duplicate, unreadable."""
    kefu = application.bot_data.services
    if kefu is not None:
        kefu.metrics.updates.labels(outcome).inc()


async def receive(application: Application, update: Update, data: dict) -> bool:
    """Store one update (`data`, its JSON data, made valid Unicode: bot.intake.storable) in the stream; True once it is
    there (or was before). If Redis is away, False, and the sender of a private message is told once that the service
    is temporarily unavailable (the update is kept by Telegram and answered when Redis is back)."""
    kefu = application.bot_data.services
    try:
        payload = json.dumps(storable(data), ensure_ascii=False)
    except (RecursionError, ValueError) as exc:  # nested deeper than any update Telegram sends: nothing to answer
        logger.warning("skipped update %s that cannot be stored: %s: %s", update.update_id, type(exc).__name__, exc)
        count_update(application, "unreadable")
        return True
    try:
        if kefu is None:
            raise RedisError("the bot is still starting")
        stored = await kefu.intake.add(update.update_id, payload)
        kefu.metrics.updates.labels("received" if stored else "duplicate").inc()
        return True
    except RedisError as exc:
        logger.warning("update %s not stored (Redis: %s); left to Telegram to deliver again", update.update_id, exc)
        await tell_unavailable(application, update)
        return False


async def handle_update(application: Application, data: dict) -> None:
    """One stored update through PTB's handlers, in its chat's order; returns when they are done."""
    try:
        update = Update.de_json(data, application.bot)
    except Exception as exc:  # stored by a version that could read it: skip, never loop on it
        logger.warning("skipped stored update %s that PTB cannot read: %s", data.get("update_id"), exc)
        return
    await application.update_processor.process_update(update, application.process_update(update))


async def run_webhook(application: Application, settings: BotSettings, stop: asyncio.Event | None = None) -> None:
    """Our aiohttp server receives updates; Telegram is told the URL and the secret at start-up."""
    from aiohttp import web

    from bot.webhook import create_webhook_app

    async with running(application):
        runner = web.AppRunner(create_webhook_app(application, settings))
        await runner.setup()
        try:
            host, port = settings.listen_host_port
            await web.TCPSite(runner, host, port).start()
            await application.bot.set_webhook(settings.webhook_url, secret_token=settings.webhook_secret.get_secret_value(),
                                              allowed_updates=Update.ALL_TYPES)
            logger.info("webhook for @%s on %s:%d%s", application.bot.username, host, port, settings.webhook_path)
            await _until_signal(stop)
        finally:
            await runner.cleanup()


async def _until_signal(stop: asyncio.Event | None, worker: asyncio.Task | None = None) -> None:
    """Until SIGINT/SIGTERM (or until `stop` is set), or until `worker` ends."""
    loop = asyncio.get_running_loop()
    signals = () if stop is not None else (signal.SIGINT, signal.SIGTERM)
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopped] + ([worker] if worker else []), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
