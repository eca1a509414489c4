"""Human handoff in Telegram: a user asks for a person (the button, /human, or in their own words: HANDOFF_WORDS),
or accepts the bot's offer of a colleague after HANDOFF_AFTER_FALLBACKS fallbacks or 👎 in a row; the operators' group
(OPERATOR_CHAT_ID) gets the transcript, an operator answers by replying to it, and the answer reaches the user and
the training log (source "operator": the best training data there is). `/done` (operator, as a reply) or `/end`
(user) closes it, and so does silence for HANDOFF_IDLE_S; after /done the customer is asked for a 1-5 rating.
While it is open the bot keeps quiet in that chat and relays what the user writes.

    register(application)     # wired by bot.handlers.register
    if await asks_for_human(kefu, text): await open_handoff(context, message, user, said=text)
    await missed(context, message, user, t)     # a fallback or a 👎: after enough in a row, the offer
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable

from redis.exceptions import RedisError
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update, User
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from bot import smalltalk
from bot.context import Context
from bot.exchanges import Exchange
from bot.handoff import RATINGS
from bot.search import words
from bot.services import Services
from bot.texts import Texts, language, texts, texts_for

logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 60
TRANSCRIPT_TURNS = 10
INLINE_WORDS_CHARS = 200  # a longer message is segmented in a thread, off the event loop
CLAUSE = re.compile(r"[，。！？；：、,.!?;:\n]+")
# what may stand beside a HANDOFF_WORDS word in a request for a person: asking, wanting, connecting, politeness, particles
REQUEST_WORDS = frozenset(
    "我 我们 你们 要 想 想要 找 转 转接 接 请 请问 麻烦 帮 帮我 给 联系 需要 和 跟 与 一下 个 一个 位 在 有 没有 有没有 能 能不能 "
    "可以 可不可以 吗 么 呢 吧 啊 呀 了 的 聊 聊聊 说话 对话 沟通 服务 在线 马上 快 快点 赶紧 直接 真的 哪里 哪儿 "
    "i d we want need would like to talk speak chat with a an the please pls can could may get me us connect transfer "
    "put through real live let now".split())


def register(application: Application, operator_chat_id: int | None) -> None:
    new = filters.UpdateType.MESSAGE
    application.add_handler(CallbackQueryHandler(human_button, pattern=r"^human$"))
    application.add_handler(CallbackQueryHandler(offer_answer, pattern=r"^offer:"))
    application.add_handler(CallbackQueryHandler(rate_handoff, pattern=r"^csat:"))
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


async def asks_for_human(kefu: Services, text: str) -> bool:
    """`requests_human` with HANDOFF_WORDS, when there are operators; "你是人工客服吗？" asks what the bot is: small talk."""
    handoff_words = kefu.settings.handoff_words
    if kefu.settings.operator_chat_id is None or not handoff_words or smalltalk.classify(text) is not None:
        return False
    if len(text) <= INLINE_WORDS_CHARS:
        return requests_human(text, handoff_words)
    return await asyncio.to_thread(requests_human, text, handoff_words)


def requests_human(text: str, handoff_words: Iterable[str]) -> bool:
    """A clause of the message (between punctuation) holds one of `handoff_words` (a word, or words in a row) among its
    whole jieba words, and nothing else but ways of asking: "包裹还没到，我要转人工", "talk to a human agent please".
    人工 is not in 人工智能 (one word); "客服电话是多少" and "你们招聘客服吗" ask about something else."""
    phrases = [p for p in map(words, handoff_words) if p]
    for clause in CLAUSE.split(text):
        said = words(clause)
        spans = [(i, i + len(p)) for p in phrases for i in range(len(said) - len(p) + 1) if said[i:i + len(p)] == p]
        covered = {i for start, end in spans for i in range(start, end)}
        if spans and all(i in covered or w in REQUEST_WORDS for i, w in enumerate(said)):
            return True
    return False


async def open_handoff(context: Context, message: Message, user: User, said: str | None = None) -> None:
    """Hand the chat to the operators; `said`: the customer's request in their own words, not yet in the history."""
    kefu, chat_id = context.kefu, message.chat.id
    lang = language(said, user.language_code)
    t = texts(lang)
    operators = kefu.settings.operator_chat_id
    if operators is None:
        await message.reply_text(t.human_unavailable)
        return
    try:
        turns = await kefu.history.recent(chat_id, TRANSCRIPT_TURNS)
        question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")  # "转人工" is not one to answer
        if not await kefu.handoffs.open(chat_id, user.id, question, lang):
            await message.reply_text(await _with_position(kefu, chat_id, t.handoff_waiting, t))
            return
        turns += [{"role": "user", "content": said}] if said else []
        transcript = "\n".join(f"{'👤' if m['role'] == 'user' else '🤖'} {m['content']}" for m in turns) or "(no history)"
        sent = await context.bot.send_message(operators, f"🙋 {_who(user)} asks for a human — chat {chat_id}.\n"
                                                         f"Reply to this message to answer; /done as a reply closes.\n\n{transcript}")
        await kefu.handoffs.link(sent.message_id, chat_id)
    except TelegramError as exc:  # the bot was removed from the operators' group, or it no longer exists
        logger.warning("handoff for chat %s not possible: operators' chat %s: %s", chat_id, operators, exc)
        await kefu.handoffs.discard(chat_id)
        await message.reply_text(t.human_unavailable)
        return
    logger.info("handoff opened for chat %s", chat_id)
    await message.reply_text(await _with_position(kefu, chat_id, t.human_requested, t))


async def _with_position(kefu: Services, chat_id: int, text: str, t: Texts) -> str:
    """The text, and the chat's place in the queue while no operator has answered it."""
    position = await kefu.handoffs.position(chat_id)
    return text if position is None else f"{text}\n{t.queue_position.format(n=position)}"


async def missed(context: Context, message: Message, user: User, t: Texts) -> None:
    """A fallback or a 👎 in this chat: after HANDOFF_AFTER_FALLBACKS in a row the customer is asked, once, whether to
    get a colleague (never a handoff without asking); the count starts again after the question."""
    kefu, chat_id = context.kefu, message.chat.id
    after = kefu.settings.handoff_after_fallbacks
    if kefu.settings.operator_chat_id is None or after == 0 or await kefu.handoffs.get(chat_id) is not None:
        return
    if await kefu.handoffs.count_miss(chat_id) < after:
        return
    await kefu.handoffs.clear_misses(chat_id)
    buttons = [[InlineKeyboardButton(t.offer_yes, callback_data=f"offer:yes:{user.id}"),
                InlineKeyboardButton(t.offer_no, callback_data=f"offer:no:{user.id}")]]
    await message.reply_text(t.offer_colleague, reply_markup=InlineKeyboardMarkup(buttons))


async def answered(kefu: Services, chat_id: int) -> None:
    """An answer from the FAQ or the model: the fallbacks in a row start again."""
    if kefu.settings.operator_chat_id is not None and kefu.settings.handoff_after_fallbacks:
        await kefu.handoffs.clear_misses(chat_id)


async def offer_answer(update: Update, context: Context) -> None:
    """The "shall I get a colleague?" buttons: only the customer they were offered to can press them."""
    query, t = update.callback_query, texts_for(update)
    _, choice, owner = (query.data.split(":") + ["", ""])[:3]
    if owner != str(query.from_user.id) or not isinstance(query.message, Message):
        await query.answer(t.stale_button)
        return
    await query.answer()
    with contextlib.suppress(TelegramError):  # the buttons go: a second tap cannot open a second request
        await query.edit_message_reply_markup(None)
    if choice == "yes":
        await open_handoff(context, query.message, query.from_user)
    else:
        await query.message.reply_text(t.offer_declined)


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
        await kefu.handoffs.touch(chat_id, replied=True)
    except RedisError as exc:
        await message.reply_text(f"Delivered to chat {chat_id}, but not logged (Redis: {exc}).")
        return
    kefu.metrics.answers.labels("operator").inc()


async def done_command(update: Update, context: Context) -> None:
    """/done as a reply in the operators' group: close that handoff, tell the customer, ask for a rating."""
    kefu, message = context.kefu, update.effective_message
    chat_id = await kefu.handoffs.chat_for(message.reply_to_message.message_id)
    state = await kefu.handoffs.get(chat_id) if chat_id is not None else None
    record_id = await kefu.handoffs.close(chat_id, "done") if state is not None else None
    if record_id is None:
        await message.reply_text("No open handoff belongs to that message.")
        return
    t = texts(state.get("lang", "zh"))
    await context.bot.send_message(chat_id, t.handoff_closed)
    buttons = [[InlineKeyboardButton(r, callback_data=f"csat:{record_id}:{r}") for r in RATINGS]]
    await context.bot.send_message(chat_id, t.rate_handoff, reply_markup=InlineKeyboardMarkup(buttons))
    await message.reply_text(f"Closed the handoff for chat {chat_id}; the customer is asked for a rating.")


async def rate_handoff(update: Update, context: Context) -> None:
    """A 1-5 button after /done: stored with the handoff once, and only from that customer; anything else changes nothing."""
    query, t = update.callback_query, texts_for(update)
    _, record_id, rating = (query.data.split(":", 2) + ["", ""])[:3]
    if not await context.kefu.handoffs.rate(record_id, query.from_user.id, rating):
        await query.answer(t.stale_button)
        return
    await query.answer(t.rated_handoff)
    with contextlib.suppress(TelegramError):
        await query.edit_message_text(f"{t.rated_handoff} {'★' * int(rating)}")


async def end_command(update: Update, context: Context) -> None:
    """/end by the user: back to the bot."""
    kefu, message = context.kefu, update.effective_message
    t = texts(language(None, update.effective_user.language_code if update.effective_user else None))
    if await kefu.handoffs.close(message.chat.id, "end"):
        if kefu.settings.operator_chat_id is not None:
            await _tell_operators(context, kefu, f"Chat {message.chat.id} ended the handoff.")
    await message.reply_text(t.handoff_closed)


async def close_idle(context: Context) -> None:
    """Every minute: handoffs quiet for HANDOFF_IDLE_S close, and the user is told (Redis or Telegram away: bot.errors
    logs it, and the next sweep tries again)."""
    kefu = context.kefu
    for chat_id in await kefu.handoffs.idle():
        if await kefu.handoffs.close(chat_id, "idle"):
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
