"""Running the console: `python -m bot console` serves it; `python -m bot console --link` prints a one-time login link
for the local admin (what `make run` prints too) and exits.

    serve(settings)                          # until Ctrl-C
    url = await local_admin_link(settings)   # CONSOLE_URL/login/<token>, valid once for 5 minutes
"""
from __future__ import annotations

import os

from aiohttp import web
from redis.asyncio import Redis

from bot.console.app import create_app
from bot.console.auth import LOCAL_ADMIN_ID, ConsoleAuth, Person
from bot.settings import BotSettings


def serve(settings: BotSettings) -> None:
    host, port = settings.console_host_port
    print(f"Kefu console on {settings.console_base} (listening on {host}:{port})", flush=True)
    web.run_app(create_app(settings), host=host, port=port, print=None)


async def local_admin_link(settings: BotSettings) -> str:
    """A login link for whoever sits at this machine: an admin named "local admin", in the terminal's language."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
    try:
        auth = ConsoleAuth.from_settings(redis, settings)
        lang = "zh" if os.environ.get("LANG", "").lower().startswith("zh") else "en"
        token = await auth.issue_link(Person(LOCAL_ADMIN_ID, "local admin", "admin", lang))
    finally:
        await redis.aclose()
    return f"{settings.console_base}/login/{token}"
