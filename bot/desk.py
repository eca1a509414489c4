"""What an operator does to an open handoff, wherever they do it: a reply in the operators' group (bot/operators.py) and
the console's Handoffs page (bot/console/handoffpages.py) both come here, so a claim, an answer and a close end up in
the same place: the customer's chat, the history, the training log (source "operator"), /faq_pending, and the
operators' group, which hears who has a chat.

    operator = Operator(user_id, "Ann", reply_to=message_id)   # reply_to: their message in the group; None from the console
    claim = await claim_chat(kefu, bot, chat_id, operator)     # Refused (nothing sent) when another has it, or it closed
    await answer(kefu, bot, chat_id, operator, "明天送达。")       # Refused, or NotLogged when delivered but Redis failed
    await pass_on(kefu, bot, chat_id, operator, message)       # a photo, a file, a voice message: copied to the customer
    record_id = await close_done(kefu, bot, chat_id)            # the customer is asked for a rating; None when not open
    await tell_operators(kefu, bot, "…", chat_id)               # a note in the group; a reply to it answers that chat
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.error import Forbidden, TelegramError

from bot.exchanges import Exchange
from bot.handoff import RATINGS, Claim
from bot.services import Services
from bot.texts import language, texts

logger = logging.getLogger(__name__)
CLOSED = "The handoff for chat {chat_id} is closed; nothing was sent."


@dataclass(frozen=True)
class Operator:
    user_id: int
    name: str
    reply_to: int | None = None  # the operator's message in the operators' group; None when they act from the console


class Refused(Exception):
    """Nothing reached the customer; the message says why (whose the chat is, or that it closed)."""


class NotLogged(Exception):
    """The answer reached the customer but not the history or the training log (Redis)."""


async def claim_chat(kefu: Services, bot: Bot, chat_id: int, operator: Operator) -> Claim:
    """The operator has the chat: the first to claim it (the group is told who), or it is theirs already; Refused when
    another operator has it or the handoff closed."""
    claim = await kefu.handoffs.claim(chat_id, operator.user_id, operator.name)
    if claim is None:
        raise Refused(CLOSED.format(chat_id=chat_id))
    if claim.operator_id != operator.user_id:
        raise Refused(f"{claim.name} has chat {chat_id} (they took it first); your message was not sent.")
    if claim.first:
        await tell_operators(kefu, bot, f"✋ {claim.name} has chat {chat_id}: only they answer it now.", chat_id, operator.reply_to)
    return claim


async def _claim_open(kefu: Services, bot: Bot, chat_id: int, operator: Operator) -> dict[str, str]:
    """claim_chat, then the handoff's state; Refused when it closed since the claim."""
    await claim_chat(kefu, bot, chat_id, operator)
    state = await kefu.handoffs.get(chat_id)
    if state is None:
        raise Refused(CLOSED.format(chat_id=chat_id))
    return state


async def answer(kefu: Services, bot: Bot, chat_id: int, operator: Operator, text: str) -> None:
    """The operator's answer: claims the chat, reaches the customer, then their history, the training log and the FAQ's
    proposals (a wording of an entry, or a new entry the FAQ lacks)."""
    state = await _claim_open(kefu, bot, chat_id, operator)
    try:
        await bot.send_message(chat_id, texts(language(text, None)).operator_says.format(text=text))
    except TelegramError as exc:  # the user blocked the bot, or the chat is gone
        raise Refused(f"Not delivered to chat {chat_id}: {exc}") from exc
    user_id, question = int(state["user_id"]), state.get("question") or ""
    try:
        if question:
            await kefu.history.append(chat_id, user_id, question, text)
            await kefu.log.append(Exchange(chat_id, user_id, question, text, "operator", None, None, 0))
            await kefu.paraphrases.operator_answered(question, text, user_id)  # a wording, or an entry the FAQ lacks
        await kefu.handoffs.touch(chat_id, replied=True)
    except RedisError as exc:
        raise NotLogged(f"Delivered to chat {chat_id}, but not logged (Redis: {exc}).") from exc
    kefu.metrics.answers.labels("operator").inc()


async def pass_on(kefu: Services, bot: Bot, chat_id: int, operator: Operator, message: Message) -> None:
    """An operator's photo, file or voice message (a reply in the operators' group): claims the chat as an answer does
    and reaches the customer as a copy, caption included. Not a training example: the log holds text answers."""
    await _claim_open(kefu, bot, chat_id, operator)
    try:
        await message.copy(chat_id)
    except TelegramError as exc:  # the user blocked the bot, the chat is gone, or the kind cannot be copied (a poll's quiz)
        raise Refused(f"Not delivered to chat {chat_id}: {exc}") from exc
    await kefu.handoffs.touch(chat_id, replied=True)


async def close_done(kefu: Services, bot: Bot, chat_id: int) -> str | None:
    """Close the handoff as /done does: the customer hears the bot is back and gets the 1-5 rating buttons; the record
    id, or None when no handoff was open."""
    state = await kefu.handoffs.get(chat_id)
    record_id = await kefu.handoffs.close(chat_id, "done") if state is not None else None
    if record_id is None:
        return None
    t = texts(state.get("lang", "zh"))
    buttons = [[InlineKeyboardButton(r, callback_data=f"csat:{record_id}:{r}") for r in RATINGS]]
    if await tell_customer(bot, chat_id, t.handoff_closed):
        await tell_customer(bot, chat_id, t.rate_handoff, reply_markup=InlineKeyboardMarkup(buttons))
    return record_id


async def tell_customer(bot: Bot, chat_id: int, text: str, **options) -> bool:
    """A message to a customer whose handoff changed; False when it could not be sent (they blocked the bot or left
    the group, the chat is gone, Telegram's flood control or a timeout): the change stands, and the operators' side
    goes on (one blocked customer stopped /done's confirmation and the idle sweep; a refused one answered the console
    500 after the close, unaudited)."""
    try:
        await bot.send_message(chat_id, text, **options)
    except Forbidden as exc:
        logger.info("chat %s cannot be told (%s)", chat_id, exc)
        return False
    except TelegramError as exc:
        logger.warning("chat %s was not told %r: %s", chat_id, text[:40], exc)
        return False
    return True


async def tell_operators(kefu: Services, bot: Bot, text: str, chat_id: int | None = None, reply_to: int | None = None) -> None:
    """A note in the operators' group (as a reply to `reply_to`); with `chat_id`, a reply to the note answers that chat.
    The group out of reach is logged, not raised: the note only informs."""
    try:
        replying = ReplyParameters(reply_to) if reply_to is not None else None
        sent = await bot.send_message(kefu.settings.operator_chat_id, text, reply_parameters=replying)
    except TelegramError as exc:
        logger.warning("could not tell the operators: %s", exc)
        return
    if chat_id is not None:
        await kefu.handoffs.link(sent.message_id, chat_id)
