"""Helpers of the console's tests: settings, the app behind aiohttp's test client, logging in, CSRF tokens, exchanges
in the training log, and Mini App initData signed as Telegram signs it."""
from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient, TestServer

from bot.console.app import create_app
from bot.console.auth import Person, init_data_hash
from bot.console.base import CONSOLE, Console
from bot.exchanges import Exchange
from bot.settings import BotSettings

BOT_TOKEN = "123456:CONSOLE-TEST-TOKEN"
ADMIN_ID, OPERATOR_ID, STRANGER_ID = 9001, 9002, 9003
ADMIN = Person(ADMIN_ID, "Ann", "admin", "en")
OPERATOR = Person(OPERATOR_ID, "Olga", "operator", "zh")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def console_settings(redis_url: str, prefix: str, **extra) -> BotSettings:
    options = {"redis_url": redis_url, "redis_prefix": prefix, "telegram_bot_token": BOT_TOKEN, "faq_encoder": "none",
               "admin_ids": str(ADMIN_ID), "operator_ids": str(OPERATOR_ID), "llmcore_url": "http://127.0.0.1:9", **extra}
    return BotSettings(_env_file=None, **options)


@contextlib.asynccontextmanager
async def console_client(settings: BotSettings, clock: Callable[[], float] = time.time):
    """The console on a loopback port with aiohttp's test client: (client, Console)."""
    async with TestClient(TestServer(create_app(settings, clock))) as client:
        yield client, client.app[CONSOLE]


async def login(client: TestClient, console: Console, person: Person = ADMIN) -> str:
    """Log in with a one-time link, as a browser does; the session's CSRF token."""
    token = await console.auth.issue_link(person)
    response = await client.post(f"/login/{token}", allow_redirects=False)
    assert response.status == 303, await response.text()
    return await csrf(client)


async def csrf(client: TestClient) -> str:
    page = await (await client.get("/")).text()
    return CSRF.search(page).group(1)


async def log_exchange(console: Console, question: str, answer: str, source: str, score: float | None = None,
                       chat_id: int = 555, rating: str | None = None) -> str:
    log = console.kefu.log
    entry_id = await log.append(Exchange(chat_id, chat_id, question, answer, source, score, "v0001" if source == "model" else None, 42))
    if rating:
        assert await log.rate(entry_id, chat_id, rating)
    return entry_id


def init_data(user: dict, auth_date: float | None = None, token: str = BOT_TOKEN, **extra: str) -> str:
    """Mini App initData as Telegram makes it: url-encoded fields and their hash."""
    fields = {"query_id": "AAHdF6IQAAAAAN0XohDhrOrc", "user": json.dumps(user, separators=(",", ":")),
              "auth_date": str(int(time.time() if auth_date is None else auth_date)), **extra}
    fields["hash"] = init_data_hash(fields, token)
    return urlencode(fields)
