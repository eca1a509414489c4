"""The webhook server (aiohttp): checks Telegram's secret header, limits the body, checks that the JSON is an
Update PTB can read, and stores it in the update stream (bot.app.receive) before answering 200 — if Redis cannot
take it, 503, and Telegram delivers it again later. Also /healthz and /metrics.

    app = create_webhook_app(application, settings)   # POST <path of WEBHOOK_URL>, GET /healthz, GET /metrics

Anything a stranger can POST gets a 4xx or a quiet 200 with a log line (an update PTB cannot read is
acknowledged so that Telegram does not redeliver it forever); never a 500, never a reply anywhere.
A 503 means only "not stored yet" (Redis away): the one answer that makes Telegram try again.
"""
from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from bot.app import count_update, receive
from bot.settings import BotSettings

logger = logging.getLogger(__name__)
MAX_UPDATE_BYTES = 1 << 20  # Telegram's updates are a few KiB; 1 MiB leaves room for long texts and entities
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
APPLICATION = web.AppKey("application", Application)
SETTINGS = web.AppKey("settings", BotSettings)


def create_webhook_app(application: Application, settings: BotSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_UPDATE_BYTES)
    app[APPLICATION] = application
    app[SETTINGS] = settings
    app.router.add_post(settings.webhook_path, receive_update)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def receive_update(request: web.Request) -> web.Response:
    """POST from Telegram: secret, size, JSON, Update; then into PTB's queue."""
    application, settings = request.app[APPLICATION], request.app[SETTINGS]
    expected = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b""
    # a header's bytes that are not UTF-8 come as surrogates: compared as the bytes they were, not a 500
    if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape"), expected):
        logger.warning("webhook: wrong or missing secret from %s", request.remote)
        return _error(403, "forbidden")
    if request.content_length is not None and request.content_length > MAX_UPDATE_BYTES:
        return _error(413, "update too large")
    try:
        data = json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "update too large")
    except (ValueError, RecursionError):  # not JSON, not UTF-8, an integer of thousands of digits, nested past reading
        return _error(400, "body is not JSON")
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        return _error(400, "not a Telegram Update")
    try:
        update = Update.de_json(data, application.bot)
    except Exception as exc:  # an old or odd format PTB cannot read: acknowledge it, or Telegram redelivers forever
        logger.warning("webhook: skipped update %s that PTB cannot read: %s", data.get("update_id"), exc)
        count_update(application, "unreadable")
        return web.json_response({"ok": True, "skipped": True})
    if not await receive(application, update, data):
        return _error(503, "temporarily unavailable")
    return web.json_response({"ok": True})


async def healthz(request: web.Request) -> web.Response:
    """Ready when Redis answers; llmcore's state is reported (the bot still answers from the FAQ without it)."""
    kefu = request.app[APPLICATION].bot_data.services
    if kefu is None:
        return web.json_response({"ready": False, "reason": "starting"}, status=503)
    try:
        redis_ok = bool(await kefu.redis.ping())
    except Exception:
        redis_ok = False
    body = {"ready": redis_ok, "redis": redis_ok, "llmcore_circuit_open": kefu.llm.breaker.is_open}
    return web.json_response(body, status=200 if redis_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    kefu = request.app[APPLICATION].bot_data.services
    body = kefu.metrics.render() if kefu else b""
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


