"""The Handoffs pages: open handoffs, and one of them answered, claimed or closed from the web exactly as from the
operators' group (bot/desk.py: the same claim, delivery, training log, /faq_pending and rating buttons).

    GET  /handoffs                      open and held handoffs: the last question, who has it, waiting time, place in the
                                        queue; and operators' answers the FAQ lacks, proposed as FAQ pairs
    GET  /handoffs/{chat_id}            the transcript, who has it, since when; forms to answer, claim, close
    POST /handoffs/{chat_id}/answer     to the customer through the bot; claims the chat (refused when another has it)
    POST /handoffs/{chat_id}/claim      this operator has the chat (atomic, as /claim)
    POST /handoffs/{chat_id}/done       closed as /done: the customer gets the rating buttons

The operators' group is told what was done from the console, so those answering in Telegram know.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from telegram import Bot

from bot import desk
from bot.console.auth import Person
from bot.console.base import Console, Handler, console, form, operator, page, see_other, session
from bot.operators import TRANSCRIPT_TURNS

MAX_HANDOFFS = 200
MAX_ANSWER_CHARS = 3500  # with the "👩‍💼 人工客服：" prefix, or the group's note, one Telegram message (4096)
ROUTE = r"/handoffs/{chat_id:-?[0-9]{1,19}}"  # a Telegram chat id (64 bits): a longer number is no chat


@dataclass(frozen=True)
class OpenHandoff:
    chat_id: int
    user_id: str
    who: str
    question: str
    opened: float
    waited: float  # seconds until the first operator answer, or until now
    position: int | None  # in the queue for a first operator answer; None once answered
    operator: str  # who has it; "" when no one claimed it yet
    held: bool  # outside business hours: not with the operators yet


routes = web.RouteTableDef()


@routes.get("/handoffs")
@operator
async def handoffs(request: web.Request) -> web.Response:
    c = console(request)
    chats = await c.kefu.redis.zrange(c.kefu.handoffs.active, 0, MAX_HANDOFFS - 1)
    held = await c.kefu.handoffs.held()
    rows = [h for h in [await _open_handoff(c, int(chat_id)) for chat_id in dict.fromkeys([*chats, *map(str, held)])] if h]
    proposed = await c.review.answers_the_faq_lacks()
    return page(request, "handoffs.html", rows=sorted(rows, key=lambda h: h.opened), proposed=proposed,
                done=request.query.get("done", ""))


@routes.get(ROUTE)
@operator
async def handoff(request: web.Request) -> web.Response:
    return await _detail(request, done=request.query.get("done", ""))


def _action(name: str) -> Callable[[Handler], Handler]:
    """POST /handoffs/{chat_id}/<name>, for operators; a refusal (another operator has the chat, it closed, Telegram out
    of reach) shows on the handoff's page."""
    def register(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def showing(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except desk.Refused as refused:
                return await _detail(request, error=str(refused), status=409)

        routes.post(f"{ROUTE}/{name}")(operator(showing))
        return handler

    return register


@_action("answer")
async def answer(request: web.Request) -> web.StreamResponse:
    """The operator's answer, delivered as a reply in the operators' group is (bot/desk.py)."""
    c, bot, chat_id, person = _acting(request)
    text = (await form(request)).get("answer", "")
    if not text or len(text) > MAX_ANSWER_CHARS:
        return await _detail(request, error=f"1-{MAX_ANSWER_CHARS} characters", status=400)
    try:
        await desk.answer(c.kefu, bot, chat_id, _operator(person), text)
    except desk.NotLogged as failed:
        await c.audit.record(person, "handoff.answer", f"chat {chat_id}", f"{text} (not logged)")
        return await _detail(request, error=str(failed), status=503)
    await c.audit.record(person, "handoff.answer", f"chat {chat_id}", text)
    await desk.tell_operators(c.kefu, bot, f"🖥 {person.name} answered chat {chat_id} from the console:\n{text}", chat_id)
    return see_other(f"/handoffs/{chat_id}?done=answer")


@_action("claim")
async def claim(request: web.Request) -> web.StreamResponse:
    """This operator has the chat, as /claim in the group (the group is told who)."""
    c, bot, chat_id, person = _acting(request)
    if (await desk.claim_chat(c.kefu, bot, chat_id, _operator(person))).first:
        await c.audit.record(person, "handoff.claim", f"chat {chat_id}")
    return see_other(f"/handoffs/{chat_id}?done=claim")


@_action("done")
async def done(request: web.Request) -> web.StreamResponse:
    """Closed as /done: the customer hears the bot is back and is asked for a rating."""
    c, bot, chat_id, person = _acting(request)
    if await desk.close_done(c.kefu, bot, chat_id) is None:
        raise desk.Refused(desk.CLOSED.format(chat_id=chat_id))
    await c.audit.record(person, "handoff.done", f"chat {chat_id}")
    await desk.tell_operators(c.kefu, bot, f"🖥 {person.name} closed chat {chat_id} from the console; the customer is asked "
                                           "for a rating.")
    return see_other("/handoffs?done=closed")


def _acting(request: web.Request) -> tuple[Console, Bot, int, Person]:
    """Who acts on which chat, and the Bot API client to act with; Refused without one (Telegram out of reach)."""
    c = console(request)
    if c.bot is None:
        raise desk.Refused("Telegram is out of the console's reach: answer in the operators' group.")
    return c, c.bot, _chat_id(request), session(request).person


def _chat_id(request: web.Request) -> int:
    return int(request.match_info["chat_id"])


def _operator(person: Person) -> desk.Operator:
    return desk.Operator(person.user_id, person.name)


async def _open_handoff(c: Console, chat_id: int) -> OpenHandoff | None:
    state = await c.kefu.handoffs.get(chat_id)
    if state is None:
        return None
    opened = float(state["opened"])
    waited = float(state.get("first_reply") or c.kefu.clock()) - opened
    return OpenHandoff(chat_id, state["user_id"], state.get("who", ""), state.get("question", ""), opened, waited,
                       await c.kefu.handoffs.position(chat_id), state.get("operator_name", ""), "held" in state)


async def _detail(request: web.Request, done: str = "", error: str = "", status: int = 200) -> web.Response:
    """One handoff with its transcript and forms; 404 when none is open for the chat (an error says why it was not sent)."""
    c, chat_id = console(request), _chat_id(request)
    h = await _open_handoff(c, chat_id)
    turns = await c.kefu.history.recent(chat_id, TRANSCRIPT_TURNS) if h else []
    notes = await c.kefu.handoffs.notes(chat_id) if h else []
    return page(request, "handoff.html", status=status if h or error else 404, chat_id=chat_id, h=h, turns=turns, notes=notes,
                done=done, error=error, max_answer=MAX_ANSWER_CHARS)
