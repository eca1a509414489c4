"""The read-only pages: the numbers of /stats with their chart, and the audit log (the handoffs: handoffpages.py).

    GET /stats             what /stats says, and /stats/chart.png
    GET /audit             every change made in the console: who, what, when
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from bot.console.base import admin, console, page
from bot.llm import AdminError
from bot.stats import chart, collect, format_stats

routes = web.RouteTableDef()


@routes.get("/stats")
@admin
async def stats(request: web.Request) -> web.Response:
    kefu = console(request).kefu
    numbers = await collect(kefu.log, handoffs=kefu.handoffs)
    try:
        served = await kefu.admin.versions()
    except AdminError:
        served = {}
    lines = format_stats(numbers, served.get("served") or served.get("current"), served.get("cost")).splitlines()
    return page(request, "stats.html", lines=lines, has_chart=bool(numbers.per_day))


@routes.get("/stats/chart.png")
@admin
async def stats_chart(request: web.Request) -> web.Response:
    numbers = await collect(console(request).kefu.log)
    png = await asyncio.to_thread(chart, numbers)  # matplotlib takes a while: not on the event loop
    if png is None:
        raise web.HTTPNotFound(text="no answers yet")
    return web.Response(body=png, content_type="image/png")


@routes.get("/audit")
@admin
async def audit(request: web.Request) -> web.Response:
    return page(request, "audit.html", rows=await console(request).audit.latest())
