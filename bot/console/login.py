"""Getting into the console: a one-time link (opened, then confirmed with a button, so that a link preview cannot use
it up), the Telegram Mini App, and logging out.

    GET  /login                  how to get a link
    GET  /login/{token}          a page with a "Log in" button; the link still works
    POST /login/{token}          the link is used up and a session starts (rate-limited per address)
    GET  /app                    the Mini App: console.js posts Telegram's initData (from the URL fragment) to /app/login
    POST /app/login              initData verified: a session starts
    POST /logout
"""
from __future__ import annotations

from http.cookies import SimpleCookie

from aiohttp import web

from bot.console.auth import TOKEN, Person
from bot.console.base import COOKIE, client_address, console, operator, page, posted, public, see_other, session
from bot.console.people import role_for

routes = web.RouteTableDef()


@routes.get("/login")
@public
async def login_help(request: web.Request) -> web.Response:
    """How to get a login link."""
    return page(request, "login.html", token=None, refused=False)


@routes.get("/login/{token}")
@public
async def confirm_link(request: web.Request) -> web.Response:
    """The link's landing page: nothing is used up until the button is pressed. A token no link can have ("..%2Flogout"
    made the button post to /logout) gets the refusal at once."""
    token = request.match_info["token"]
    if TOKEN.fullmatch(token) is None:
        return page(request, "login.html", status=403, token=None, refused=True)
    return page(request, "login.html", token=token, refused=False)


@routes.post("/login/{token}")
@public
async def use_link(request: web.Request) -> web.StreamResponse:
    """The button: the link is used up; a session starts when it was valid."""
    c = console(request)
    if not await c.auth.allow_attempt(client_address(request)):
        return page(request, "login.html", status=429, token=None, refused=False, too_many=True)
    person = await c.auth.redeem_link(request.match_info["token"])
    if person is None:
        return page(request, "login.html", status=403, token=None, refused=True)
    response = see_other("/")
    await _start(request, person, response, "login.link")
    return response


@routes.get("/app")
@public
async def miniapp(request: web.Request) -> web.Response:
    """Opened by Telegram as a Mini App: the script sends the initData it finds in the URL fragment."""
    return page(request, "miniapp.html")


@routes.post("/app/login")
@public
async def miniapp_login(request: web.Request) -> web.Response:
    c = console(request)
    if not await c.auth.allow_attempt(client_address(request)):
        return web.json_response({"ok": False, "error": "too many attempts"}, status=429)
    init_data = str((await posted(request)).get("init_data", ""))
    person = await c.auth.verify_init_data(init_data, lambda user_id: role_for(c.settings, c.bot, user_id))
    if person is None:
        return web.json_response({"ok": False, "error": "not allowed"}, status=403)
    response = web.json_response({"ok": True, "next": "/"})
    await _start(request, person, response, "login.miniapp")
    return response


@routes.post("/logout")
@operator
async def logout(request: web.Request) -> web.StreamResponse:
    c = console(request)
    await c.auth.end_session(request.cookies.get(COOKIE, ""))
    await c.audit.record(session(request).person, "logout")
    response = see_other("/login")
    response.del_cookie(COOKIE, path="/")
    return response


async def _start(request: web.Request, person: Person, response: web.StreamResponse, how: str) -> None:
    c = console(request)
    sid, _ = await c.auth.start_session(person)
    https = c.settings.console_base.startswith("https://")
    # A Mini App in Telegram's web client is a frame inside web.telegram.org, where browsers drop a Lax cookie: there the
    # session cookie is SameSite=None, Secure and Partitioned (CHIPS: kept for that top-level site only). POSTs still need
    # the CSRF token and a same-origin Origin, so SameSite adds nothing they lack.
    if how == "login.miniapp" and https:
        cookie = SimpleCookie({COOKIE: sid})[COOKIE]
        cookie.update({"max-age": str(c.auth.session_s), "path": "/", "httponly": True, "secure": True, "samesite": "None"})
        response.headers.add("Set-Cookie", cookie.OutputString() + "; Partitioned")  # http.cookies knows it from Python 3.14
    else:
        response.set_cookie(COOKIE, sid, max_age=c.auth.session_s, path="/", httponly=True, samesite="Lax", secure=https)
    await c.audit.record(person, how)
