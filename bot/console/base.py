"""What every console view shares: the process's state (`Console`), who may open a route (`public`, `operator`,
`admin`; a route without a mark is for admins), and small helpers to read a form and render a page.

    @operator
    async def inbox(request: web.Request) -> web.Response:
        c = console(request)
        return page(request, "inbox.html", rows=...)
"""
from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import MultiDictProxy
from telegram import Bot

from bot.console.audit import AuditLog
from bot.console.auth import ConsoleAuth, Session
from bot.console.people import Roles
from bot.console.review import Review
from bot.services import Services
from bot.settings import BotSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "kefu_console"
MAX_FORM_BYTES = 6 << 20  # a FAQ file of 5 MB, as the bot takes one


@dataclass
class Console:
    settings: BotSettings
    kefu: Services
    auth: ConsoleAuth
    audit: AuditLog
    review: Review
    bot: Bot | None  # operators' chat membership, answers to handed-off customers; None without a token or operators' chat
    roles: Roles  # who is what now: a session's role is checked again on every request (app.guard)


CONSOLE = web.AppKey("console", Console)
SETTINGS = web.AppKey("settings", BotSettings)
CLOCK = web.AppKey("clock", Callable[[], float])
SESSION_KEY = web.RequestKey("console_session", Session)


def _role(role: str) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.role = role  # read by app.guard before the handler runs
        return handler

    return mark


public, operator, admin = _role("public"), _role("operator"), _role("admin")


def console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def client_address(request: web.Request) -> str | None:
    """Who is asking: the peer's address, or behind a trusted proxy (CONSOLE_TRUSTED_PROXIES) the X-Real-IP it sets (a
    stranger's ten bad logins a minute, counted by the proxy's address, refused every login for everyone)."""
    remote = request.remote
    try:
        peer = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote
    if any(peer in network for network in console(request).settings.console_trusted_proxies):
        try:
            return str(ipaddress.ip_address(request.headers.get("X-Real-IP", "").strip()))
        except ValueError:  # no usable header: the proxy's own address, as before
            pass
    return remote


def session(request: web.Request) -> Session:
    return request[SESSION_KEY]


async def posted(request: web.Request) -> MultiDictProxy:
    """The posted form; 400 when it cannot be read (not UTF-8, an unknown charset, broken multipart)."""
    try:
        return await request.post()
    except (ValueError, LookupError, BadHttpMessage) as exc:
        raise web.HTTPBadRequest(text=f"unreadable form ({exc.__class__.__name__})") from None


async def form(request: web.Request) -> dict[str, str]:
    """The posted fields as text (files are not accepted)."""
    data = await posted(request)
    return {k: v.strip() if isinstance(v, str) else "" for k, v in data.items()}


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, context, status=status)


def see_other(location: str) -> web.Response:
    """Post/redirect/get: a reload does not post again."""
    return web.Response(status=303, headers={"Location": location})
