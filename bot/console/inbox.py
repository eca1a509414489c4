"""The inbox and one exchange: what waits for review, the conversation around it, and what a person does about it.

    GET  /                          the inbox (?show=todo|reviewed|all&source=&rating=&q=&days=1|7|30)
    GET  /exchange/{id}             the exchange, its chat around it, the FAQ candidates (as /why shows them)
    POST /exchange/{id}/correct     the right answer: an operator's answer in the training log; marked reviewed
    POST /exchange/{id}/faq         (admins) the question as a new FAQ entry, or as a similar question of an entry
    POST /exchange/{id}/reviewed
"""
from __future__ import annotations

from aiohttp import web

from bot.console.base import admin, console, form, operator, page, see_other, session
from bot.console.review import DAYS, RATINGS, SHOWS, Filters, Row
from bot.exchanges import SOURCES
from bot.faq import MAX_FAQ_TEXT

NUM_CANDIDATES = 5


routes = web.RouteTableDef()


@routes.get("/")
@operator
async def inbox(request: web.Request) -> web.Response:
    """Exchanges newest first, filtered, with counts per filter."""
    filters = Filters.parse(dict(request.query))
    found = await console(request).review.inbox(filters)
    return page(request, "inbox.html", inbox=found, filters=filters, shows=SHOWS, sources=SOURCES, ratings=RATINGS,
                days=DAYS)


@routes.get("/exchange/{id}")
@operator
async def exchange(request: web.Request) -> web.Response:
    c, row = console(request), await _row(request)
    candidates = await c.kefu.faq.match(row.question, k=NUM_CANDIDATES)
    return page(request, "exchange.html", row=row, around=await c.review.around(row), candidates=candidates,
                done=request.query.get("done", ""), error=request.query.get("error", ""))


@routes.post("/exchange/{id}/correct")
@operator
async def correct(request: web.Request) -> web.StreamResponse:
    c, row, fields = console(request), await _row(request), await form(request)
    answer = fields.get("answer", "")
    if not answer or len(answer) > MAX_FAQ_TEXT:
        return see_other(f"/exchange/{row.id}?error=answer")
    entry_id = await c.review.correct(row, answer)
    await c.review.mark(row.id, session(request).person)
    # the customer's words stay out of the audit log: /forget erases them from the training log, and nothing else holds them
    await c.audit.record(session(request).person, "exchange.correct", row.id, f"answer: {answer} (log {entry_id})")
    return see_other(f"/exchange/{row.id}?done=correct")


@routes.post("/exchange/{id}/faq")
@admin
async def add_to_faq(request: web.Request) -> web.StreamResponse:
    c, row, fields = console(request), await _row(request), await form(request)
    question, person = fields.get("question") or row.question, session(request).person
    try:
        if fields.get("mode") == "similar":
            entry_id = fields.get("entry_id", "")
            if not entry_id.isdigit() or not await c.kefu.faq.add_similar(entry_id, question):
                return see_other(f"/exchange/{row.id}?error=entry")
        else:
            entry_id = await c.kefu.faq.add(question, fields.get("answer") or row.answer)
    except ValueError:
        return see_other(f"/exchange/{row.id}?error=faq")
    await c.review.mark(row.id, person)
    await c.audit.record(person, f"faq.{'similar' if fields.get('mode') == 'similar' else 'add'}", f"#{entry_id}", question)
    return see_other(f"/exchange/{row.id}?done=faq")


@routes.post("/exchange/{id}/reviewed")
@operator
async def reviewed(request: web.Request) -> web.StreamResponse:
    c, row = console(request), await _row(request)
    if await c.review.mark(row.id, session(request).person):
        await c.audit.record(session(request).person, "exchange.reviewed", row.id)
    return see_other(f"/exchange/{row.id}?done=reviewed")


async def _row(request: web.Request) -> Row:
    entry_id = request.match_info["id"]
    row = await console(request).review.row(entry_id)  # None for anything that is no entry id (ExchangeLog.get)
    if row is None:
        raise web.HTTPNotFound(text="no such exchange (it may have left the log)")
    return row
