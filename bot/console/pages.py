"""The read-only pages: open handoffs (operators too), the numbers of /stats with their chart, and the audit log.

    GET /handoffs          open handoffs: the customer's last question, since when, waiting for a first answer or not;
                           and operators' answers the FAQ lacks, proposed as FAQ pairs (an admin adds one from its exchange)
    GET /stats             what /stats says, and /stats/chart.png
    GET /audit             every change made in the console: who, what, when
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from bot.console.base import admin, console, operator, page
from bot.llm import AdminError
from bot.stats import chart, collect, format_stats

MAX_HANDOFFS = 200


@dataclass(frozen=True)
class OpenHandoff:
    chat_id: str
    user_id: str
    question: str
    opened: float
    last: float
    position: int | None  # in the queue for a first operator answer; None once answered


routes = web.RouteTableDef()


@routes.get("/handoffs")
@operator
async def handoffs(request: web.Request) -> web.Response:
    kefu = console(request).kefu
    active = await kefu.redis.zrange(kefu.handoffs.active, 0, MAX_HANDOFFS - 1, withscores=True)
    rows = []
    for chat_id, last in active:
        state = await kefu.handoffs.get(int(chat_id))
        if state is not None:
            rows.append(OpenHandoff(chat_id, state["user_id"], state.get("question", ""), float(state.get("opened") or last), last,
                                    await kefu.handoffs.position(int(chat_id))))
    proposed = await console(request).review.answers_the_faq_lacks()
    return page(request, "handoffs.html", rows=sorted(rows, key=lambda r: r.opened), now=time.time(), proposed=proposed)


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
