"""The local Bot API server (tests/botapi.py) driven by the real python-telegram-bot."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from telegram import BotCommand, BotCommandScopeChat, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, MessageHandler, filters

from tests.botapi import (
    GROUP_ID,
    USER_ID,
    WEBHOOK_SECRET_HEADER,
    BotApiServer,
    callback_update,
    html_visible_text,
    text_update,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server():
    async with BotApiServer() as srv:
        yield srv


def build_app(server: BotApiServer, **kwargs) -> Application:
    builder = ApplicationBuilder().token(server.token).base_url(f"{server.base}/bot")
    if "rate_limiter" in kwargs:
        builder = builder.rate_limiter(kwargs["rate_limiter"])
    return builder.build()


@pytest.fixture
async def bot(server):
    app = build_app(server)
    async with app:  # initialize() calls getMe
        yield app.bot


KEYBOARD = InlineKeyboardMarkup([[InlineKeyboardButton("有用", callback_data="fb:up"),
                                  InlineKeyboardButton("没用", callback_data="fb:down")]])


async def test_get_me_and_send_message_round_trip(server, bot):
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot, me.can_join_groups) == (123456, "kefu_test_bot", True, True)

    msg = await bot.send_message(USER_ID, "你好，有什么可以帮您？", reply_markup=KEYBOARD, disable_notification=True)
    assert msg.text == "你好，有什么可以帮您？"
    assert msg.chat.id == USER_ID and msg.chat.type == "private" and msg.from_user.id == me.id
    assert msg.reply_markup == KEYBOARD
    assert abs(msg.date.timestamp() - time.time()) < 5

    method, params = server.calls[-1]
    assert method == "sendMessage"
    assert params["chat_id"] == USER_ID and params["disable_notification"] is True
    assert params["reply_markup"]["inline_keyboard"][0][1]["callback_data"] == "fb:down"  # decoded from the form's JSON string
    [record] = server.messages[USER_ID]
    assert (record["message_id"], record["text"], record["edits"], record["deleted"]) == (msg.message_id, msg.text, 0, False)

    second = await bot.send_message(USER_ID, "第二条", reply_to_message_id=msg.message_id)
    assert second.message_id == msg.message_id + 1
    assert second.reply_to_message.message_id == msg.message_id
    assert server.sent_texts(USER_ID) == ["你好，有什么可以帮您？", "第二条"]


async def test_edit_and_delete(server, bot):
    msg = await bot.send_message(USER_ID, "正在查询…", reply_markup=KEYBOARD)
    edited = await bot.edit_message_text("查到了：七天内可退货。", chat_id=USER_ID, message_id=msg.message_id, reply_markup=KEYBOARD)
    assert edited.text == "查到了：七天内可退货。" and edited.edit_date is not None
    with pytest.raises(BadRequest, match="(?i)message is not modified"):
        await bot.edit_message_text("查到了：七天内可退货。", chat_id=USER_ID, message_id=msg.message_id, reply_markup=KEYBOARD)
    stripped = await bot.edit_message_reply_markup(chat_id=USER_ID, message_id=msg.message_id, reply_markup=None)
    assert stripped.reply_markup is None
    record = server.messages[USER_ID][0]
    assert record["edits"] == 2 and record["text"] == "查到了：七天内可退货。" and record["reply_markup"] is None

    with pytest.raises(BadRequest, match="(?i)message to edit not found"):
        await bot.edit_message_text("x", chat_id=USER_ID, message_id=9999)
    assert await bot.delete_message(USER_ID, msg.message_id) is True
    assert record["deleted"] is True
    assert server.sent_texts(USER_ID) == [] and server.sent_texts(USER_ID, include_deleted=True) == ["查到了：七天内可退货。"]
    with pytest.raises(BadRequest, match="(?i)message to delete not found"):
        await bot.delete_message(USER_ID, msg.message_id)


async def test_text_limits(server, bot):
    for text in ("", "  \n "):
        with pytest.raises(BadRequest, match="(?i)^message text is empty$"):
            await bot.send_message(USER_ID, text)
    with pytest.raises(BadRequest, match="(?i)^message is too long$"):
        await bot.send_message(USER_ID, "长" * 4097)
    ok = await bot.send_message(USER_ID, "长" * 4096)
    assert len(ok.text) == 4096
    assert [m for m, _ in server.calls[-4:]] == ["sendMessage"] * 4  # failed calls are recorded too
    assert len(server.messages[USER_ID]) == 1


async def test_html_length_counted_after_parsing(server, bot):
    msg = await bot.send_message(USER_ID, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    assert msg.text == "a" * 4096
    assert server.messages[USER_ID][0]["text"] == "<b>" + "a" * 4096 + "</b>"  # the record keeps what the bot sent
    await bot.send_message(USER_ID, "&lt;" * 4096, parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)message is too long"):
        await bot.send_message(USER_ID, "<i>" + "a" * 4097 + "</i>", parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)can't parse entities"):
        await bot.send_message(USER_ID, "<b>未闭合", parse_mode="HTML")
    with pytest.raises(BadRequest, match="(?i)can't parse entities"):
        await bot.send_message(USER_ID, "1 < 2", parse_mode="HTML")
    assert await bot.send_message(USER_ID, "1 < 2")  # without parse_mode nothing is parsed


def test_html_visible_text():
    assert html_visible_text('<b>粗</b> <a href="https://x.cn?a=1&amp;b=2">链接</a> &quot;&#26524;&#x56;&quot;') == '粗 链接 "果V"'
    assert html_visible_text("a &nbsp; b") == "a &nbsp; b"


async def test_get_updates_long_poll_and_offset(server, bot):
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await server.wait_for("getUpdates")
    assert server.calls[-1][1]["timeout"] == 5
    await server.push(text_update("/start@kefu_test_bot 你好 @someone"))
    updates = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started < 2
    [update] = updates
    assert update.message.text == "/start@kefu_test_bot 你好 @someone"
    assert [(e.type, e.offset, e.length) for e in update.message.entities] == [("bot_command", 0, 20), ("mention", 24, 8)]
    assert update.message.from_user.language_code == "zh-hans"

    again = await bot.get_updates(timeout=0)  # not yet confirmed
    assert [u.update_id for u in again] == [update.update_id]
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert server.updates == []

    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert 0.9 < time.monotonic() - started < 3


async def test_webhook_conflict_and_delivery(server, bot):
    received: list[tuple[str | None, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers.get(WEBHOOK_SECRET_HEADER), await request.read()))
        return web.Response(status=200 if request.headers.get(WEBHOOK_SECRET_HEADER) == "s3cret" else 403)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        assert await bot.set_webhook(url, secret_token="s3cret", allowed_updates=["message", "callback_query"], max_connections=5)
        info = await bot.get_webhook_info()
        assert info.url == url and info.max_connections == 5 and info.allowed_updates == ("message", "callback_query")
        with pytest.raises(Conflict, match="can't use getUpdates method while webhook is active"):
            await bot.get_updates()

        assert await server.push(text_update("有人吗")) == 200
        secret, body = received[-1]
        assert secret == "s3cret"
        assert Update.de_json(__import__("json").loads(body), bot).message.text == "有人吗"
        assert await server.post_raw(b"{not json", secret=None) == 403

        assert await bot.delete_webhook(drop_pending_updates=True)
        assert (await bot.get_webhook_info()).url == ""
        assert await server.push(text_update("回到轮询")) is None
        assert [u.message.text for u in await bot.get_updates(timeout=0)] == ["回到轮询"]
    finally:
        await runner.cleanup()


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB itself reads RetryAfter.retry_after
async def test_flood_raises_retry_after_and_rate_limiter_retries(server, bot):
    server.flood(1, retry_after=1)
    with pytest.raises(RetryAfter, match="Retry in 1"):
        await bot.send_message(USER_ID, "太快了")
    assert await bot.send_message(USER_ID, "好了")  # flood over

    app = build_app(server, rate_limiter=AIORateLimiter(max_retries=2))
    async with app:
        server.flood(1, retry_after=1)
        mark = len(server.calls)
        started = time.monotonic()
        msg = await app.bot.send_message(USER_ID, "重试成功")
        assert msg.text == "重试成功"
        assert time.monotonic() - started >= 1
        assert [m for m, _ in server.calls[mark:]] == ["sendMessage", "sendMessage"]
    assert server.sent_texts(USER_ID) == ["好了", "重试成功"]


async def test_send_message_draft(server, bot):
    assert await bot.send_message_draft(USER_ID, draft_id=7, text="正在思考") is True
    assert await bot.send_message_draft(USER_ID, draft_id=7, text="") is True  # empty text: "Thinking..." placeholder
    assert [(d["draft_id"], d.get("text")) for d in server.drafts] == [(7, "正在思考"), (7, "")]  # PTB sends the empty string
    with pytest.raises(BadRequest):
        await bot.send_message_draft(USER_ID, draft_id=0, text="x")
    with pytest.raises(BadRequest):
        await bot.send_message_draft(GROUP_ID, draft_id=1, text="x")
    with pytest.raises(BadRequest, match="(?i)too long"):
        await bot.send_message_draft(USER_ID, draft_id=1, text="x" * 4097)
    assert len(server.drafts) == 2


async def test_misc_methods(server, bot):
    assert await bot.send_chat_action(USER_ID, "typing")
    assert server.actions == [{"chat_id": USER_ID, "action": "typing"}]
    assert await bot.answer_callback_query("42", text="谢谢反馈")
    assert server.callback_answers[-1]["text"] == "谢谢反馈"
    commands = [BotCommand("start", "开始"), BotCommand("help", "帮助")]
    assert await bot.set_my_commands(commands, scope=BotCommandScopeChat(USER_ID), language_code="zh")
    assert [c.command for c in await bot.get_my_commands(scope=BotCommandScopeChat(USER_ID), language_code="zh")] == ["start", "help"]
    assert await bot.get_my_commands() == ()
    assert list(server.commands) == [f"chat:{USER_ID}/zh"]
    assert await bot.delete_my_commands(scope=BotCommandScopeChat(USER_ID), language_code="zh") and server.commands == {}

    doc = await bot.send_document(USER_ID, b"col1,col2\n1,2\n", filename="report.csv", caption="报表")
    assert doc.document.file_name == "report.csv" and doc.document.file_size == 14 and doc.caption == "报表"
    photo = await bot.send_photo(USER_ID, b"\x89PNG" + b"0" * 96, filename="p.png")
    assert photo.photo[-1].file_size == 100
    assert [(f["method"], f["filename"], f["size"]) for f in server.files] == [("document", "report.csv", 14), ("photo", "p.png", 100)]
    assert await bot.set_message_reaction(USER_ID, doc.message_id, "👍")
    assert server.reactions[-1]["reaction"] == [{"type": "emoji", "emoji": "👍"}]
    chat = await bot.get_chat(USER_ID)
    assert chat.id == USER_ID and chat.type == "private"


async def test_raw_protocol(server):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base}/bot{server.token}/GETME", json={}) as resp:
            assert resp.status == 200 and (await resp.json())["result"]["username"] == "kefu_test_bot"
        async with http.post(f"{server.base}/bot{server.token}/sendmessage", json={"chat_id": USER_ID, "text": "json body"}) as resp:
            assert (await resp.json())["result"]["text"] == "json body"
        assert server.calls[-1] == ("sendMessage", {"chat_id": USER_ID, "text": "json body"})
        async with http.get(f"{server.base}/bot1:WRONG/getMe") as resp:
            assert resp.status == 401 and await resp.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        async with http.get(f"{server.base}/bot{server.token}/noSuchMethod") as resp:
            assert resp.status == 404 and await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    with pytest.raises(TimeoutError, match="sendMessage"):
        await server.wait_for("sendPhoto", timeout=0.2)
    wrong = ApplicationBuilder().token("1:WRONG").base_url(f"{server.base}/bot").build()
    with pytest.raises(InvalidToken):
        await wrong.bot.get_me()


def test_builders_parse_with_ptb():
    update = Update.de_json({"update_id": 1, **text_update("问 @kefu_test_bot 😀 @abcde", chat_id=GROUP_ID, chat_type="supergroup")}, None)
    assert update.effective_chat.type == "supergroup" and update.effective_user.id == USER_ID
    assert [(e.type, e.offset, e.length) for e in update.message.entities] == [("mention", 2, 14), ("mention", 20, 6)]
    assert update.message.parse_entities() == {e: t for e, t in zip(update.message.entities, ["@kefu_test_bot", "@abcde"])}
    message = {"message_id": 5, "date": 0, "chat": {"id": USER_ID, "type": "private"}}
    cb = Update.de_json({"update_id": 2, **callback_update("fb:up", message=message)}, None)
    assert cb.callback_query.data == "fb:up" and cb.callback_query.message.message_id == 5


async def test_application_polling_echo(server):
    app = build_app(server)

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(f"echo: {update.message.text}", do_quote=True)

    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with app:
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            await server.push(text_update("在吗", message_id=50))
            _, params = await server.wait_for(lambda m, p: m == "sendMessage", timeout=5)
            assert params["text"] == "echo: 在吗"
            assert params["reply_parameters"]["message_id"] == 50
            [record] = server.messages[USER_ID]
            assert record["message_id"] == 51 and record["message"]["reply_to_message"]["text"] == "在吗"
        finally:
            await app.updater.stop()
            await app.stop()
    assert server.updates == []  # the updater confirmed the update on stop
