"""The console's aiohttp application: the routes, who may open each, the security headers, and the services it opens
for its lifetime (the bot's Redis, FAQ, training log and llmcore's admin API, the same classes the bot uses).

    app = create_app(settings)                        # python -m bot console serves it on CONSOLE_LISTEN
    web.run_app(app, host=..., port=...)

GET /healthz answers the deployment's probes (200 while Redis answers). Every request but the login pages, the static
files and /healthz needs a session cookie (a GET without one is sent to /login,
anything else gets 401); admin pages answer 403 to operators; every POST needs the session's CSRF token.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import TelegramError

from bot.console import faqpages, handoffpages, inbox, login, modelpages, pages
from bot.console.audit import AuditLog
from bot.console.auth import ConsoleAuth, csrf_ok
from bot.console.base import CLOCK, CONSOLE, COOKIE, MAX_FORM_BYTES, SESSION_KEY, SETTINGS, Console, Handler, posted, public
from bot.console.i18n import browser_language, translator
from bot.console.people import Roles
from bot.console.review import Review
from bot.services import Services
from bot.settings import BotSettings

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'self' https://web.telegram.org")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                    "Cache-Control": "no-store"}


def create_app(settings: BotSettings, clock: Callable[[], float] = time.time) -> web.Application:
    """`clock`: the handoffs' time, as the bot's (tests move it)."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_FORM_BYTES)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app.on_response_prepare.append(_secure)
    env = aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("bot.console", "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined, context_processors=[_template_context])
    env.filters["when"] = lambda at: time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(at))) + " UTC"
    env.filters["num"] = _number
    app.cleanup_ctx.append(_open_console)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/healthz", healthz)
    for module in (login, inbox, faqpages, modelpages, handoffpages, pages):
        app.router.add_routes(module.routes)
    return app


async def _open_console(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    kefu = await Services.open(settings, clock=app[CLOCK])
    bot = await _bot(settings)
    auth = ConsoleAuth.from_settings(kefu.redis, settings)
    app[CONSOLE] = Console(settings, kefu, auth, AuditLog(kefu.redis, settings.redis_prefix),
                           Review(kefu, settings.console_low_confidence), bot, Roles(settings, bot))
    try:
        yield
    finally:
        if bot is not None:
            await bot.shutdown()
        await kefu.close()


async def _bot(settings: BotSettings) -> Bot | None:
    """A Bot API client to ask Telegram who is in the operators' chat and to answer handed-off customers (bot/desk.py);
    None without a token or an operators' chat."""
    if settings.telegram_bot_token is None or settings.operator_chat_id is None:
        return None
    bot = Bot(settings.telegram_bot_token.get_secret_value(), base_url=f"{settings.telegram_api_base}/bot")
    try:
        await bot.initialize()
    except TelegramError as exc:
        logger.warning("console: Telegram unreachable (%s): only ADMIN_IDS and OPERATOR_IDS can log in", exc)
        return None
    return bot


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every answer: pages, errors, streams and files."""
    response.headers.update(SECURITY_HEADERS)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, role and CSRF checks before any view runs; a route without a role mark is for admins."""
    needed = getattr(request.match_info.handler, "role", "admin")
    if request.method == "POST" and not _same_origin(request):
        logger.warning("console: POST %s from another origin (%r) refused", request.path, request.headers.get("Origin"))
        raise web.HTTPForbidden(text="cross-origin request refused")
    if needed == "public":
        return await handler(request)
    c = request.app[CONSOLE]
    session = await c.auth.session(request.cookies.get(COOKIE))
    role = await c.roles.of(session.person.user_id, unknown=session.person.role) if session else None
    if session is not None and role is None:  # no longer an admin or operator: the session ends now
        logger.warning("console: user %s is no longer %s; session ended", session.person.user_id, session.person.role)
        await c.auth.end_session(request.cookies.get(COOKIE))
        session = None
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther("/login")
        raise web.HTTPUnauthorized(text="log in first")
    if role != session.person.role:  # an admin taken out of ADMIN_IDS who is still an operator
        session = replace(session, person=replace(session.person, role=role))
    if needed == "admin" and session.person.role != "admin":
        raise web.HTTPForbidden(text="admins only")
    if request.method == "POST" and not csrf_ok(session, (await posted(request)).get("csrf")):
        logger.warning("console: POST %s without a valid CSRF token from user %s", request.path, session.person.user_id)
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    request[SESSION_KEY] = session
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST comes from (Origin); one from another site is refused, logins included, so that no
    page elsewhere can post a login link of its own into someone's browser; an Origin that is not a URL is foreign too."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:  # "http://[", a fullwidth "#" in the host...
        return False


def _number(value: object, digits: int = 3) -> str:
    """A metric for a table: rounded, or "—" when there is none."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


async def _template_context(request: web.Request) -> dict:
    session = request.get(SESSION_KEY)
    lang = session.person.lang if session else browser_language(request.headers.get("Accept-Language", ""))
    return {"t": translator(lang), "lang": lang, "session": session, "person": session.person if session else None,
            "csrf": session.csrf if session else "", "path": request.path}


@public
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"Content-Type": STATIC_FILES[name]})


@public
async def healthz(request: web.Request) -> web.Response:
    """For the deployment's probes: ready while Redis answers (the pages need nothing else)."""
    try:
        await request.app[CONSOLE].kefu.redis.ping()
    except RedisError:
        return web.json_response({"ready": False, "redis": False}, status=503)
    return web.json_response({"ready": True, "redis": True})
