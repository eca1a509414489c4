"""User-facing callbacks: commands, questions, buttons. `register(application)` wires them.

Groups are answered only when the bot is mentioned or replied to. A typing action runs until the answer is sent (no
draft of a model answer: it is judged whole before anyone sees it).
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from telegram import BotCommand, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, MessageEntity, Update
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bot import operators
from bot.context import Context
from bot.pipeline import Reply
from bot.services import Services
from bot.split import clip, split_message, telegram_length
from bot.texts import Texts, language, texts, texts_for

logger = logging.getLogger(__name__)
TYPING_EVERY_S = 4.0  # Telegram shows a chat action for ~5 s
MAX_BUTTON_CHARS = 40
COMMANDS = [("start", "开始 / start"), ("help", "帮助 / help"), ("reset", "清除上下文 / forget the context"),
            ("forget", "删除我的数据 / erase my data"), ("human", "人工客服 / talk to a human"), ("end", "结束人工服务 / end the handoff")]


def command_for_bot(message: Message, username: str | None, named: bool) -> bool:
    """The message starts with a command for this bot: "/help@kefu_bot", or with `named` False a bare "/help" too (in a
    group a bare command may be meant for any bot there; "/start@other_bot" is never ours)."""
    commands = [text for entity, text in message.parse_entities([MessageEntity.BOT_COMMAND]).items() if entity.offset == 0]
    if not commands:
        return False
    _, at, target = commands[0].partition("@")
    return target.lower() == (username or "").lower() if at else not named


class AddressedToBot(filters.MessageFilter):
    """Private chats always; in groups only a mention of the bot, a reply to one of its messages, or a command named
    for it ("/forget@kefu_bot": Telegram's own way to address one bot among several); never a channel's post that
    Telegram forwards into its discussion group by itself ("有问题请问 @kefu_bot" is an advert)."""

    def filter(self, message: Message) -> bool:
        if message.chat.type == ChatType.PRIVATE:
            return True
        if message.is_automatic_forward:  # a channel's post copied into its discussion group: an advert, not a question
            return False
        bot = message.get_bot()
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == bot.id:
            return True
        if command_for_bot(message, bot.username, named=True):
            return True
        mentions = message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
        return any(text.lstrip("@").lower() == (bot.username or "").lower() or (e.user is not None and e.user.id == bot.id)
                   for e, text in mentions.items())


def register(application: Application, operator_chat_id: int | None = None) -> None:
    new = filters.UpdateType.MESSAGE
    private = filters.ChatType.PRIVATE
    customers = ~filters.Chat(operator_chat_id) if operator_chat_id is not None else filters.ALL  # operators are not asking
    operators.register(application, operator_chat_id)
    application.add_handler(CommandHandler("start", start, filters=new & private))
    application.add_handler(CommandHandler("help", help_command, filters=new & AddressedToBot()))
    application.add_handler(CommandHandler("reset", reset, filters=new & AddressedToBot()))
    application.add_handler(CommandHandler("forget", forget, filters=new & AddressedToBot()))
    application.add_handler(MessageHandler(new & filters.COMMAND & private, unknown_command))
    application.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND & AddressedToBot() & customers, question))
    application.add_handler(MessageHandler(new & private & ~filters.TEXT, text_only))
    application.add_handler(CallbackQueryHandler(feedback, pattern=r"^fb:"))
    application.add_handler(CallbackQueryHandler(suggestion, pattern=r"^faq:"))
    application.add_handler(CallbackQueryHandler(forget_answer, pattern=r"^forget:"))
    application.add_handler(CallbackQueryHandler(stale_button))


async def set_commands(application: Application) -> None:
    await application.bot.set_my_commands([BotCommand(name, about) for name, about in COMMANDS])


async def admitted(application: Application, update: Update) -> bool:
    """The per-user rate limit (a notice once, then silence), checked before an update waits for its chat's turn
    (bot.app.PerChatOrder): a burst from one chat beyond the limit is dropped at once, instead of holding the intake
    slots every other chat needs while it waits behind its own chat's answers. Counted: messages the bot acts on
    (private, or addressed to it or a command it takes in a group: chatter it never answers uses up nobody's limit, but
    96 /end in a group were all answered, each waiting on Telegram's group limit in an intake slot) and button taps (a "did
    you mean" button stays under its message: each tap sent the whole answer again and logged it), per sender (an
    anonymous group admin or a channel posting in a group is a sender of its own, where its user is a shared stand-in
    bot). Not the operators' chat. Redis away: let through (the handlers meet it and tell the customer). An update tried
    again (Redis or Telegram's API away: bot.intake) was counted the first time: counting each try dropped it, for good,
    once its tries passed the limit."""
    kefu, message, query, sender = application.bot_data.services, update.message, update.callback_query, update.effective_sender
    chat = message.chat if message is not None else query.message.chat if query is not None and query.message else None
    if kefu is None or (message is None and query is None) or sender is None or (chat and chat.id == kefu.settings.operator_chat_id):
        return True
    if (message is not None and message.chat.type != ChatType.PRIVATE and not AddressedToBot().check_update(update)
            and not command_for_bot(message, application.bot.username, named=False)):  # /end and /human need no mention
        return True
    if kefu.intake.tried_before(update.update_id):
        return True
    try:
        verdict = await kefu.guard.admit(sender.id)
    except RedisError:
        return True
    if verdict == "ok":
        kefu.metrics.updates.labels("accepted").inc()
        return True
    kefu.metrics.updates.labels("rate_limited").inc()
    try:
        if query is not None:  # a tap is always answered (or its button spins), with the notice the first time
            await query.answer(texts_for(update).slow_down if verdict == "notice" else None)
        elif verdict == "notice" and message.chat.type == ChatType.PRIVATE:
            await message.reply_text(texts_for(update).slow_down)
    except TelegramError as exc:
        logger.warning("rate-limit notice to chat %s not sent: %s", chat.id if chat else None, exc)
    return False


async def start(update: Update, context: Context) -> None:
    """Greet the user in their language."""
    user = update.effective_user
    await update.effective_message.reply_text(texts_for(update).greeting.format(name=user.first_name if user else ""))


async def help_command(update: Update, context: Context) -> None:
    """What the bot can do."""
    await update.effective_message.reply_text(texts_for(update).help)


async def reset(update: Update, context: Context) -> None:
    """Forget this chat's context; the training log keeps the exchanges."""
    await context.kefu.history.clear(update.effective_chat.id)
    await update.effective_message.reply_text(texts_for(update).reset_done)


async def forget(update: Update, context: Context) -> None:
    """Ask before erasing everything about the user."""
    t = texts_for(update)
    buttons = [[InlineKeyboardButton(t.forget_yes, callback_data=f"forget:yes:{update.effective_user.id}"),
                InlineKeyboardButton(t.forget_no, callback_data=f"forget:no:{update.effective_user.id}")]]
    await update.effective_message.reply_text(t.forget_confirm, reply_markup=InlineKeyboardMarkup(buttons))


async def forget_answer(update: Update, context: Context) -> None:
    """The confirmation buttons of /forget: only the user who asked can press them."""
    query, t = update.callback_query, texts_for(update)
    _, choice, owner = (query.data.split(":") + ["", ""])[:3]
    if owner != str(query.from_user.id):
        await query.answer(t.stale_button)
        return
    if choice == "yes":
        await context.kefu.forget_user(query.from_user.id)
    await query.answer()
    await _edit(query, t.forget_done if choice == "yes" else t.forget_cancelled)


async def unknown_command(update: Update, context: Context) -> None:
    """A command the bot does not have."""
    await update.effective_message.reply_text(texts_for(update).unknown_command)


async def text_only(update: Update, context: Context) -> None:
    """Photos, stickers, voice, locations... in a private chat: to the operators while a human has the chat (a photo of
    the broken box is what they need); one with a caption is the caption's question ("怎么退货？" under a photo was told
    the bot reads only text); else a note that the bot reads text."""
    message = update.effective_message
    if await operators.relay_to_operators(context.kefu, context, message):
        return
    if (message.caption or "").strip():
        await question(update, context)
        return
    await message.reply_text(texts_for(update).text_only)


async def question(update: Update, context: Context) -> None:
    """Answer from the FAQ, the model, or say honestly that a human should."""
    kefu, message, user = context.kefu, update.effective_message, update.effective_user
    text = _strip_mention(message, context.bot.username)
    lang = language(text, user.language_code if user else None)
    t = texts(lang)
    if not text:
        await message.reply_text(t.help)
        return
    if await operators.relay_to_operators(kefu, context, message):
        return  # a human has this chat: the bot keeps quiet (and the operators read a long message whole)
    if not any(ch.isalnum() for ch in text):  # "👍", "？？", zero-width spaces: nothing to look up (each went to the model,
        await message.reply_text(t.help)     # got the fallback, and two in a row offered a colleague)
        return
    if len(text) > kefu.settings.max_message_chars:
        await message.reply_text(t.too_long.format(limit=kefu.settings.max_message_chars))
        return
    if await operators.asks_for_human(kefu, text):
        await operators.open_handoff(context, message, user, said=text)
        return
    if await operators.took_comment(kefu, message, t):
        return  # the customer's comment on the handoff they just rated
    # no draft of the answer while it is generated: the gate and the FAQ check judge the whole answer, and a draft
    # showed the customer answers they then refused (a stored answer written for someone else, among them)
    async with typing(context, message.chat_id):
        reply = await kefu.pipeline.answer(message.chat_id, user.id, text, lang)
    kefu.metrics.answers.labels(reply.source).inc()
    kefu.metrics.latency.labels(reply.source).observe(reply.latency_ms / 1000)
    await send_reply(message, reply, t, kefu, update.update_id)
    if reply.source == "fallback":
        await operators.missed(context, message, user, t)
    elif reply.source in ("faq", "model"):
        await operators.answered(kefu, message.chat_id)


async def send_reply(message: Message, reply: Reply, t: Texts, kefu: Services | None = None,
                     update_id: int | None = None) -> None:
    """The answer, split at 4096 characters on sentence boundaries, with the buttons under the last part; once it
    is out, the update is marked answered (a redelivery after a crash is not answered twice)."""
    text = reply.text
    if reply.suggestions:
        text += "\n\n" + t.did_you_mean
    parts = split_message(text, measure=lambda s: telegram_length(html.escape(s, quote=False)))
    for part in parts[:-1]:
        await message.reply_text(html.escape(part, quote=False), parse_mode=ParseMode.HTML)
    sent = await message.reply_text(html.escape(parts[-1], quote=False), parse_mode=ParseMode.HTML, reply_markup=_buttons(reply, t))
    if kefu is not None:
        try:  # for /why as a reply to this message, and what a tap on a button proposes; the answer is out already
            if update_id is not None:
                await kefu.intake.mark_answered(update_id)
            if reply.entry_id:
                await kefu.log.link_message(sent.chat_id, sent.message_id, reply.entry_id)
            if reply.suggestions and message.text:
                await kefu.paraphrases.offered(sent.chat_id, sent.message_id, message.text, [m.entry.id for m in reply.suggestions],
                                              message.from_user.id if message.from_user else None)
        except RedisError as exc:
            logger.warning("no /why link or offer for message %s: %s", sent.message_id, exc)


def _buttons(reply: Reply, t: Texts) -> InlineKeyboardMarkup:
    rows = [[InlineKeyboardButton(clip(m.matched, MAX_BUTTON_CHARS), callback_data=f"faq:{m.entry.id}")] for m in reply.suggestions]
    if reply.entry_id and reply.source != "smalltalk":  # a canned "you're welcome" needs no rating
        rows.append([InlineKeyboardButton("👍", callback_data=f"fb:{reply.entry_id}:up"),
                     InlineKeyboardButton("👎", callback_data=f"fb:{reply.entry_id}:down")])
    if reply.source == "fallback":
        rows.append([InlineKeyboardButton(t.human_button, callback_data="human")])
    return InlineKeyboardMarkup(rows)


async def feedback(update: Update, context: Context) -> None:
    """👍 / 👎 on an answer: stored with its logged exchange; a forged or stale button changes nothing."""
    query, t, kefu = update.callback_query, texts_for(update), context.kefu
    _, entry_id, rating = (query.data.split(":", 2) + ["", ""])[:3]
    stored = await kefu.log.rate(entry_id, query.from_user.id, rating)
    if stored in ("new", "changed"):  # the same button again counts once
        kefu.metrics.feedback.labels(rating).inc()
    await query.answer(t.thanks_feedback if stored else t.stale_button)
    if stored in ("new", "changed") and rating == "down" and isinstance(query.message, Message):
        await operators.missed(context, query.message, query.from_user, t)


async def suggestion(update: Update, context: Context) -> None:
    """A "did you mean" button: answer with that FAQ entry."""
    query, t = update.callback_query, texts_for(update)
    message = query.message if isinstance(query.message, Message) else None
    if message is None:  # a button on an inline message: no chat to answer in
        await query.answer(t.stale_button)
        return
    kefu, entry_id = context.kefu, query.data.removeprefix("faq:")
    reply = await kefu.pipeline.answer_from_faq(message.chat.id, query.from_user.id, entry_id)
    if reply is None:
        await query.answer(t.stale_button)
        return
    # the customer's wording, proposed for that entry (only if the bot offered it there)
    await kefu.paraphrases.tapped(message.chat.id, message.message_id, entry_id, query.from_user.id)
    await query.answer()
    await send_reply(message, reply, t, kefu, update.update_id)


async def stale_button(update: Update, context: Context) -> None:
    """Any other callback: an old or forged button."""
    await update.callback_query.answer(texts_for(update).stale_button)


@contextlib.asynccontextmanager
async def typing(context: Context, chat_id: int) -> AsyncIterator[None]:
    """Keep 'typing…' visible until the block ends."""
    async def keep() -> None:
        while True:
            with contextlib.suppress(TelegramError):
                await context.bot.send_chat_action(chat_id, ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY_S)

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _strip_mention(message: Message, username: str | None) -> str:
    """The question: the text (or a photo's or file's caption) without the bot's @name, in whatever case it was typed
    (Telegram's usernames are case-insensitive: "@Kefu_Bot" stayed in the question and sank its FAQ score)."""
    text = message.text or message.caption or ""
    if username:
        text = re.sub(rf"@{re.escape(username)}(?![A-Za-z0-9_])", " ", text, flags=re.IGNORECASE)
    return text.strip()


async def _edit(query: CallbackQuery, text: str) -> None:
    with contextlib.suppress(TelegramError):
        await query.edit_message_text(text)
