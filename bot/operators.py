"""Human handoff in Telegram: a user asks for a person (the button, /human, or in their own words: HANDOFF_WORDS),
or accepts the bot's offer of a colleague after HANDOFF_AFTER_FALLBACKS fallbacks or 👎 in a row; the operators' group
(OPERATOR_CHAT_ID) gets a briefing (summary, language, wait, transcript: bot/briefing.py), an operator answers by
replying to it, and the answer reaches the user and the training log (source "operator": the best training data
there is) and, for a question the FAQ lacks, /faq_pending (bot/paraphrases.py). The first operator to answer or to
/claim the chat has it: the others are told who, and their replies are not relayed. Outside HANDOFF_HOURS the
customer hears when someone will answer and may leave messages; the handoff waits, and a sweep hands it to the
operators when the hours start. `/done` (operator, as a reply) or `/end` (user) closes it, and so does silence for
HANDOFF_IDLE_S; after /done the customer is asked for a 1-5 rating and then, optionally, a comment. While it is open
the bot keeps quiet in that chat and relays what the user writes.

    register(application)     # wired by bot.handlers.register
    if await asks_for_human(kefu, text): await open_handoff(context, message, user, said=text)
    await missed(context, message, user, t)     # a fallback or a 👎: after enough in a row, the offer
    if await took_comment(kefu, message, t): ...  # the customer's message right after their rating
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update, User
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from bot import desk, smalltalk
from bot.briefing import Case, briefing
from bot.context import Context
from bot.handoff import Claim
from bot.search import words
from bot.services import Services
from bot.split import split_message
from bot.texts import Texts, language, texts, texts_for

logger = logging.getLogger(__name__)
SWEEP_EVERY_S = 60
IDLE_JOB, HOURS_JOB = "handoff_idle", "handoff_hours"  # JobQueue names
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
    application.add_handler(CallbackQueryHandler(skip_comment, pattern=r"^csat_skip$"))
    application.add_handler(CommandHandler("human", human_command, filters=new & ~_operators(operator_chat_id)))
    application.add_handler(CommandHandler("end", end_command, filters=new & ~_operators(operator_chat_id)))
    if operator_chat_id is not None:
        operators = new & filters.Chat(operator_chat_id)
        application.add_handler(CommandHandler("done", done_command, filters=operators & filters.REPLY))
        application.add_handler(CommandHandler("claim", claim_command, filters=operators))
        application.add_handler(MessageHandler(operators & filters.REPLY & filters.TEXT & ~filters.COMMAND, operator_reply))
        application.add_handler(MessageHandler(operators & filters.REPLY & ATTACHMENTS, operator_reply))
    if application.job_queue is not None:
        application.job_queue.run_repeating(close_idle, interval=SWEEP_EVERY_S, first=SWEEP_EVERY_S, name=IDLE_JOB)
        application.job_queue.run_repeating(deliver_held, interval=SWEEP_EVERY_S, first=SWEEP_EVERY_S, name=HOURS_JOB)


# what a customer or an operator may send besides text; copied across as it is (Message.copy)
ATTACHMENTS = (filters.PHOTO | filters.VIDEO | filters.ANIMATION | filters.Document.ALL | filters.AUDIO | filters.VOICE
               | filters.VIDEO_NOTE | filters.Sticker.ALL | filters.LOCATION | filters.CONTACT)


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
    """Hand the chat to the operators, or outside business hours hold it for them; `said`: the customer's request in
    their own words, not yet in the history."""
    kefu, chat_id = context.kefu, message.chat.id
    lang = language(said, user.language_code)
    t = texts(lang)
    if kefu.settings.operator_chat_id is None:
        await message.reply_text(t.human_unavailable)
        return
    turns = await kefu.history.recent(chat_id, TRANSCRIPT_TURNS)
    question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")  # "转人工" is not one to answer
    held = not _in_hours(kefu)
    if not await kefu.handoffs.open(chat_id, user.id, question, lang, held=held, who=_who(user)):
        state = await kefu.handoffs.get(chat_id) or {}
        text = _after_hours(kefu, t) if "held" in state else await _with_position(kefu, chat_id, t.handoff_waiting, t)
        await message.reply_text(text)
        return
    if said:
        await kefu.handoffs.leave_note(chat_id, said)
    if held:
        logger.info("handoff for chat %s held until business hours", chat_id)
        await message.reply_text(_after_hours(kefu, t))
    elif await deliver(context, chat_id):
        await message.reply_text(await _with_position(kefu, chat_id, t.human_requested, t))


async def deliver(context: Context, chat_id: int) -> bool:
    """The handoff's briefing to the operators' group, each part linked to the chat; False when it cannot get there (the
    bot was removed from the group, or it is gone): the handoff is dropped and the customer told."""
    kefu = context.kefu
    state = await kefu.handoffs.get(chat_id)
    if state is None:
        return False
    try:
        for part in split_message(await _briefing(kefu, chat_id, state)):
            sent = await context.bot.send_message(kefu.settings.operator_chat_id, part)
            await kefu.handoffs.link(sent.message_id, chat_id)
    except TelegramError as exc:
        logger.warning("handoff for chat %s not possible: operators' chat %s: %s", chat_id, kefu.settings.operator_chat_id, exc)
        await kefu.handoffs.discard(chat_id)
        await context.bot.send_message(chat_id, texts(state.get("lang", "zh")).human_unavailable)
        return False
    logger.info("handoff for chat %s with the operators", chat_id)
    return True


async def _briefing(kefu: Services, chat_id: int, state: dict[str, str]) -> str:
    """What the operators see (bot/briefing.py), from the history, the chat's last logged exchange and the FAQ."""
    last = await kefu.log.latest(int(state["user_id"]), chat_id)
    since = float(state["opened"])
    if last is not None and 0 <= since - float(last["at"]) <= kefu.settings.handoff_idle_s:
        since = float(last["at"])  # they have waited since the question the bot could not answer
    matches = await kefu.faq.match(last["question"], k=1) if last is not None else []
    case = Case(state.get("who", "someone"), chat_id, state.get("lang", "zh"), kefu.clock() - since, last,
                matches[0] if matches else None, await kefu.history.recent(chat_id, TRANSCRIPT_TURNS),
                await kefu.handoffs.notes(chat_id))
    return briefing(case, kefu.settings.faq_best, kefu.settings.faq_suggest)


def _in_hours(kefu: Services) -> bool:
    hours = kefu.settings.business_hours
    return hours is None or hours.is_open(kefu.clock())


def _after_hours(kefu: Services, t: Texts, text: str | None = None) -> str:
    """`text` (the after-hours notice by default) with the time the operators are next in."""
    hours = kefu.settings.business_hours
    if hours is None:  # HANDOFF_HOURS was unset since: the next sweep hands it over
        return t.handoff_waiting
    at = hours.next_open(kefu.clock())
    return (text or t.after_hours).format(when=t.opens_at.format(at=at, zone=at.tzinfo.key))


async def deliver_held(context: Context) -> None:
    """Every minute: in business hours, the handoffs held outside them go to the operators, the earliest first, and
    their customers are told (one replica releases each: bot.handoff)."""
    kefu = context.kefu
    if not _in_hours(kefu):
        return
    for chat_id in await kefu.handoffs.held():
        if await kefu.handoffs.release(chat_id) and await deliver(context, chat_id):
            state = await kefu.handoffs.get(chat_id) or {}
            t = texts(state.get("lang", "zh"))
            await desk.tell_customer(context.bot, chat_id, await _with_position(kefu, chat_id, t.handoff_delivered, t))


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
    """While a handoff is open the user's messages go to the operators (kept for them while it is held outside
    business hours); True when this one did. A photo, file or voice message goes as a copy after a line saying whose
    it is (held: copied at once all the same, since a note holds only text)."""
    state = await kefu.handoffs.get(message.chat.id)
    if state is None or kefu.settings.operator_chat_id is None:
        return False
    text = message.text or described(message)
    if "held" in state:
        if message.text is None and not await _relay(kefu, context, message, f"📎 {_who(message.from_user)} — chat "
                                                     f"{message.chat.id}, left outside business hours:\n{text}", link=False):
            return False
        await kefu.handoffs.leave_note(message.chat.id, text)
        await kefu.handoffs.touch(message.chat.id, question=message.text)
        t = texts(state.get("lang", "zh"))
        await message.reply_text(_after_hours(kefu, t, t.note_kept))
        return True
    whose = f" ({state['operator_name']} has it)" if state.get("operator_name") else ""
    if not await _relay(kefu, context, message, f"💬 {_who(message.from_user)} — chat {message.chat.id}{whose}:\n{text}", link=True):
        return False
    await kefu.handoffs.touch(message.chat.id, question=message.text)
    return True


async def _relay(kefu: Services, context: Context, message: Message, header: str, link: bool) -> bool:
    """The header into the operators' group (in parts when a long name and 2,000 emoji pass Telegram's 4,096), then a
    copy of the message's attachment if it has one; each linked to the chat (`link`), so that a reply to any of them
    answers it. False when nothing got there."""
    sent = []
    try:
        for part in split_message(header):
            sent.append(await context.bot.send_message(kefu.settings.operator_chat_id, part))
        if message.text is None:
            sent.append(await message.copy(kefu.settings.operator_chat_id))
    except TelegramError as exc:
        logger.warning("could not relay to the operators: %s", exc)
        if not sent:
            return False
    for part in sent if link else ():
        await kefu.handoffs.link(part.message_id, message.chat.id)
    return True


def described(message: Message) -> str:
    """A message without text in words, for the operators' header and notes: "[photo] 这是破损的箱子"."""
    kind = next((name for name in ("photo", "video", "animation", "document", "audio", "voice", "video_note", "sticker",
                                   "location", "contact") if getattr(message, name, None)), "message")
    return f"[{kind}] {message.caption}" if message.caption else f"[{kind}]"


async def claim_command(update: Update, context: Context) -> None:
    """/claim as a reply to a handoff message: this operator has that chat; the others are told."""
    kefu, message = context.kefu, update.effective_message
    replied = message.reply_to_message
    chat_id = await kefu.handoffs.chat_for(replied.message_id) if replied is not None else None
    if chat_id is None:
        await message.reply_text("Reply with /claim to a handoff message to take that chat.")
    elif (claim := await _claim(context, message, chat_id)) is not None and not claim.first:
        await message.reply_text(f"Chat {chat_id} is yours already.")


async def _claim(context: Context, message: Message, chat_id: int) -> Claim | None:
    """The operator who sent `message` has the chat (bot/desk.py); otherwise None, and they hear whose it is (or that it
    closed)."""
    try:
        return await desk.claim_chat(context.kefu, context.bot, chat_id, _operator(message))
    except desk.Refused as refused:
        await message.reply_text(str(refused))
        return None


def _operator(message: Message) -> desk.Operator:
    return desk.Operator(message.from_user.id, message.from_user.full_name, reply_to=message.message_id)


async def operator_reply(update: Update, context: Context) -> None:
    """An operator's reply in the operators' group: the first to answer claims the chat; to the user, into the history,
    the training log and the FAQ's proposals (bot/desk.py, as from the console). A photo, file or voice message is
    copied to the user."""
    kefu, message = context.kefu, update.effective_message
    replied = message.reply_to_message
    chat_id = await kefu.handoffs.chat_for(replied.message_id)
    if chat_id is None:
        if not (message.is_topic_message and replied.forum_topic_created):  # in a forum, every message replies to its topic
            await message.reply_text("This is not a handoff message: reply to the bot's handoff message to answer a user.")
        return
    try:
        if message.text is not None:
            await desk.answer(kefu, context.bot, chat_id, _operator(message), message.text)
        else:
            await desk.pass_on(kefu, context.bot, chat_id, _operator(message), message)
    except (desk.Refused, desk.NotLogged) as failed:
        await message.reply_text(str(failed))


async def done_command(update: Update, context: Context) -> None:
    """/done as a reply in the operators' group: close that handoff, tell the customer, ask for a rating."""
    kefu, message = context.kefu, update.effective_message
    chat_id = await kefu.handoffs.chat_for(message.reply_to_message.message_id)
    if chat_id is None or await desk.close_done(kefu, context.bot, chat_id) is None:
        await message.reply_text("No open handoff belongs to that message.")
        return
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
    skip = InlineKeyboardMarkup([[InlineKeyboardButton(t.comment_skip, callback_data="csat_skip")]])
    chat_id = query.message.chat.id if query.message is not None else query.from_user.id
    await context.bot.send_message(chat_id, t.comment_prompt, reply_markup=skip)


async def took_comment(kefu: Services, message: Message, t: Texts) -> bool:
    """The customer's message right after their rating is its comment (bot.handoff): stored, thanked, not answered."""
    if message.from_user is None or not await kefu.handoffs.comment(message.chat.id, message.from_user.id, message.text or ""):
        return False
    await message.reply_text(t.comment_thanks)
    return True


async def skip_comment(update: Update, context: Context) -> None:
    """"Skip" under the request for a comment: the next message is a question again."""
    query = update.callback_query
    await query.answer()
    if isinstance(query.message, Message):
        await context.kefu.handoffs.skip_comment(query.message.chat.id)
        with contextlib.suppress(TelegramError):
            await query.edit_message_reply_markup(None)


async def end_command(update: Update, context: Context) -> None:
    """/end by the user: back to the bot."""
    kefu, message = context.kefu, update.effective_message
    t = texts(language(None, update.effective_user.language_code if update.effective_user else None))
    if await kefu.handoffs.close(message.chat.id, "end"):
        if kefu.settings.operator_chat_id is not None:
            await desk.tell_operators(kefu, context.bot, f"Chat {message.chat.id} ended the handoff.")
    await message.reply_text(t.handoff_closed)


async def close_idle(context: Context) -> None:
    """Every minute: handoffs quiet for HANDOFF_IDLE_S close, and the user is told (Redis or Telegram away: bot.errors
    logs it, and the next sweep tries again)."""
    kefu = context.kefu
    for chat_id in await kefu.handoffs.idle():
        lang = (await kefu.handoffs.get(chat_id) or {}).get("lang", "zh")  # the customer's language, as the handoff knew it
        if await kefu.handoffs.close(chat_id, "idle"):
            await desk.tell_customer(context.bot, chat_id, texts(lang).handoff_idle)
            quiet = kefu.settings.handoff_idle_s
            await desk.tell_operators(kefu, context.bot, f"The handoff for chat {chat_id} closed after {quiet} s of silence.")


def _who(user: User | None) -> str:
    if user is None:
        return "someone"
    return f"{user.full_name} (@{user.username}, id {user.id})" if user.username else f"{user.full_name} (id {user.id})"
