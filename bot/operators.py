"""Human handoff in Telegram: a user asks for a person, the operators' group (OPERATOR_CHAT_ID) gets the
transcript, an operator answers by replying to it, and the answer reaches the user and the training log
(source "operator": the best training data there is). `/done` (operator, as a reply) or `/end` (user)
closes it, and so does silence for HANDOFF_IDLE_S. While it is open the bot keeps quiet in that chat and
relays what the user writes.

    register(application)     # wired by bot.handlers.register
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError
from telegram import Message, Update, User
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from bot.context import Context
from bot.exchanges import Exchange
from bot.services import Services
from bot.texts import language, texts

logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 60
TRANSCRIPT_TURNS = 10


def register(application: Application, operator_chat_id: int | None) -> None:
    new = filters.UpdateType.MESSAGE
    application.add_handler(CallbackQueryHandler(human_button, pattern=r"^human$"))
    application.add_handler(CommandHandler("human", human_command, filters=new & ~_operators(operator_chat_id)))
    application.add_handler(CommandHandler("end", end_command, filters=new & ~_operators(operator_chat_id)))
    if operator_chat_id is not None:
        operators = new & filters.Chat(operator_chat_id)
        application.add_handler(CommandHandler("done", done_command, filters=operators & filters.REPLY))
        application.add_handler(MessageHandler(operators & filters.REPLY & filters.TEXT & ~filters.COMMAND, operator_reply))
    if application.job_queue is not None:
        application.job_queue.run_repeating(close_idle, interval=SWEEP_EVERY_S, first=SWEEP_EVERY_S)


def _operators(chat_id: int | None) -> filters.BaseFilter:
    return filters.Chat(chat_id) if chat_id is not None else filters.Chat(chat_id=[])


async def human_button(update: Update, context: Context) -> None:
    """The "talk to a human" button under a fallback answer."""
    query = update.callback_query
    await query.answer()
    if isinstance(query.message, Message):
        await open_handoff(context, query.message, query.from_user)


async def human_command(update: Update, context: Context) -> None:
    """/human: the same as the button."""
    await open_handoff(context, update.effective_message, update.effective_user)


async def open_handoff(context: Context, message: Message, user: User) -> None:
    kefu, chat_id = context.kefu, message.chat.id
    t = texts(language(None, user.language_code))
    operators = kefu.settings.operator_chat_id
    if operators is None:
        await message.reply_text(t.human_unavailable)
        return
    try:
        turns = await kefu.history.recent(chat_id, TRANSCRIPT_TURNS)
        question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
        if not await kefu.handoffs.open(chat_id, user.id, question):
            await message.reply_text(t.handoff_waiting)
            return
        transcript = "\n".join(f"{'👤' if m['role'] == 'user' else '🤖'} {m['content']}" for m in turns) or "(no history)"
        sent = await context.bot.send_message(operators, f"🙋 {_who(user)} asks for a human — chat {chat_id}.\n"
                                                         f"Reply to this message to answer; /done as a reply closes.\n\n{transcript}")
        await kefu.handoffs.link(sent.message_id, chat_id)
    except TelegramError as exc:  # the bot was removed from the operators' group, or it no longer exists
        logger.warning("handoff for chat %s not possible: operators' chat %s: %s", chat_id, operators, exc)
        await kefu.handoffs.close(chat_id)
        await message.reply_text(t.human_unavailable)
        return
    logger.info("handoff opened for chat %s", chat_id)
    await message.reply_text(t.human_requested)


async def relay_to_operators(kefu: Services, context: Context, message: Message) -> bool:
    """While a handoff is open the user's messages go to the operators; True when this one did."""
    state = await kefu.handoffs.get(message.chat.id)
    if state is None or kefu.settings.operator_chat_id is None:
        return False
    text = message.text or "(non-text message)"
    try:
        sent = await context.bot.send_message(kefu.settings.operator_chat_id,
                                              f"💬 {_who(message.from_user)} — chat {message.chat.id}:\n{text}")
    except TelegramError as exc:
        logger.warning("could not relay to the operators: %s", exc)
        return False
    await kefu.handoffs.link(sent.message_id, message.chat.id)
    await kefu.handoffs.touch(message.chat.id, question=message.text)
    return True


async def operator_reply(update: Update, context: Context) -> None:
    """An operator's reply in the operators' group: to the user, into the history and the training log."""
    kefu, message = context.kefu, update.effective_message
    chat_id = await kefu.handoffs.chat_for(message.reply_to_message.message_id)
    if chat_id is None:
        await message.reply_text("This is not a handoff message: reply to the bot's handoff message to answer a user.")
        return
    state = await kefu.handoffs.get(chat_id)
    if state is None:
        await message.reply_text(f"The handoff for chat {chat_id} is closed; nothing was sent.")
        return
    t = texts(language(message.text, None))
    try:
        await context.bot.send_message(chat_id, t.operator_says.format(text=message.text))
    except TelegramError as exc:  # the user blocked the bot, or the chat is gone
        await message.reply_text(f"Not delivered to chat {chat_id}: {exc}")
        return
    user_id, question = int(state["user_id"]), state.get("question") or ""
    try:
        if question:
            await kefu.history.append(chat_id, user_id, question, message.text)
            await kefu.log.append(Exchange(chat_id, user_id, question, message.text, "operator", None, None, 0))
            await kefu.paraphrases.operator_answered(question, message.text, user_id)  # an FAQ answer: a wording to learn
        await kefu.handoffs.touch(chat_id)
    except RedisError as exc:
        await message.reply_text(f"Delivered to chat {chat_id}, but not logged (Redis: {exc}).")
        return
    kefu.metrics.answers.labels("operator").inc()


async def done_command(update: Update, context: Context) -> None:
    """/done as a reply in the operators' group: close that handoff."""
    kefu, message = context.kefu, update.effective_message
    chat_id = await kefu.handoffs.chat_for(message.reply_to_message.message_id)
    if chat_id is None or not await kefu.handoffs.close(chat_id):
        await message.reply_text("No open handoff belongs to that message.")
        return
    await context.bot.send_message(chat_id, texts("zh").handoff_closed)
    await message.reply_text(f"Closed the handoff for chat {chat_id}.")


async def end_command(update: Update, context: Context) -> None:
    """/end by the user: back to the bot."""
    kefu, message = context.kefu, update.effective_message
    t = texts(language(None, update.effective_user.language_code if update.effective_user else None))
    if await kefu.handoffs.close(message.chat.id):
        if kefu.settings.operator_chat_id is not None:
            await _tell_operators(context, kefu, f"Chat {message.chat.id} ended the handoff.")
    await message.reply_text(t.handoff_closed)


async def close_idle(context: Context) -> None:
    """Every minute: handoffs quiet for HANDOFF_IDLE_S close, and the user is told (Redis or Telegram away: bot.errors
    logs it, and the next sweep tries again)."""
    kefu = context.kefu
    for chat_id in await kefu.handoffs.idle():
        if await kefu.handoffs.close(chat_id):
            await context.bot.send_message(chat_id, texts("zh").handoff_idle)
            quiet = kefu.settings.handoff_idle_s
            await _tell_operators(context, kefu, f"The handoff for chat {chat_id} closed after {quiet} s of silence.")


async def _tell_operators(context: Context, kefu: Services, text: str) -> None:
    try:
        await context.bot.send_message(kefu.settings.operator_chat_id, text)
    except TelegramError as exc:
        logger.warning("could not tell the operators: %s", exc)


def _who(user: User | None) -> str:
    if user is None:
        return "someone"
    return f"{user.full_name} (@{user.username}, id {user.id})" if user.username else f"{user.full_name} (id {user.id})"
