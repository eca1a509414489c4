"""The bot end to end: real PTB against the local Bot API server, a private real Redis, the real llmcore
service on a tiny model — in polling and in webhook mode."""
import asyncio
import json
import logging
import socket

import pytest
from telegram.error import InvalidToken

from bot.app import build_application, run_polling, run_webhook
from bot.texts import texts

from .botapi import GROUP_ID, USER_ID, callback_update, message_update, text_update
from .botkit import IN_FAQ, MODEL_ONLY, SECRET, SLOW_ANSWER, ask, buttons, model_answer, running_bot, settings_for, slow_model
from .conftest import free_port, keys_with, shared_file, start_redis


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_faq_model_feedback_and_forget(mode, telegram, redis_url, llmcore_url, prefix, redis, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, mode)
    async with running_bot(settings, telegram):
        greeting = await ask(telegram, "/start")
        assert "Kefu" in greeting["text"]

        faq_reply = await ask(telegram, IN_FAQ[0][0])
        assert faq_reply["text"] == IN_FAQ[0][1] and {"👍", "👎"} <= set(buttons(faq_reply))

        model_reply = await ask(telegram, MODEL_ONLY[0])
        expected = await model_answer(llmcore_url, [{"role": "user", "content": MODEL_ONLY[0]}],
                                      repetition_penalty=settings.repetition_penalty)  # what llmcore says (history: tests/test_pipeline.py)
        assert model_reply["text"] == expected.text.strip() and expected.confidence >= settings.min_confidence
        # no draft while it is generated: one showed answers the gate then refused (a stored answer for someone else)
        assert not any(m == "sendMessageDraft" for m, _ in telegram.calls)

        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(model_reply)["👎"], message=telegram.messages[USER_ID][-1]))
        _, answer = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert answer.get("text") == "感谢您的反馈！"
        entries = await redis.xrange(f"{prefix}log")
        assert [e["source"] for _, e in entries] == ["faq", "model"]
        assert await redis.hget(f"{prefix}ratings", entries[1][0]) == "down"

        forged = len(telegram.calls)
        await telegram.push(callback_update(f"fb:{entries[0][0]}:up", user_id=USER_ID + 1))  # not the asker's answer
        _, answer = await telegram.wait_for("answerCallbackQuery", since=forged)
        assert answer.get("text") == "这个按钮已失效。" and await redis.hget(f"{prefix}ratings", entries[0][0]) is None

        confirm = await ask(telegram, "/forget")
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(confirm)["确定删除"], message=telegram.messages[USER_ID][-1]))
        await telegram.wait_for("editMessageText", since=mark)
        assert telegram.messages[USER_ID][-1]["text"] == "已删除我保存的关于您的全部数据。"
        for needle in (str(USER_ID), MODEL_ONLY[0]):
            assert await keys_with(redis, prefix, needle) == []
        assert await keys_with(redis, prefix, IN_FAQ[0][0]) == [f"{prefix}faq"]  # the shop's FAQ, not the user's data


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_llmcore_down_gives_the_fallback_with_a_human_button(mode, telegram, redis_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, f"http://127.0.0.1:{free_port()}", prefix, mode, llmcore_timeout_s=3)
    async with running_bot(settings, telegram):
        reply = await ask(telegram, "这个问题没人知道答案")
        assert reply["text"].startswith("抱歉") and "人工客服" in buttons(reply)
        english = await ask(telegram, "Where is my parcel right now?")
        assert english["text"].startswith("Sorry") and "Talk to a human" in buttons(english)
        faq_reply = await ask(telegram, IN_FAQ[1][0])  # the FAQ still answers without the model
        assert faq_reply["text"] == IN_FAQ[1][1]


async def test_groups_answer_only_when_addressed(telegram, redis_url, llmcore_url, prefix, seeded):
    """... and group chatter the bot does not answer uses up nobody's rate limit (3 a minute here: 5 unaddressed texts
    used to count, and the mention after them was dropped)."""
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", rate_limit_per_minute=3, faq_encoder="none")
    async with running_bot(settings, telegram) as application:
        for _ in range(4):
            await telegram.push(text_update("大家好，今天开会吗", chat_type="supergroup", chat_id=GROUP_ID))
        await telegram.push(text_update(IN_FAQ[0][0], chat_type="supergroup", chat_id=GROUP_ID))
        await telegram.push(message_update(chat_type="supergroup", chat_id=GROUP_ID, sticker={
            "file_id": "s", "file_unique_id": "u", "type": "regular", "width": 1, "height": 1, "is_animated": False, "is_video": False}))
        # the name in another case: Telegram's usernames are case-insensitive (it stayed in the question, which then
        # missed its FAQ entry)
        mentioned = await ask(telegram, f"@{application.bot.username.upper()} {IN_FAQ[1][0]}", chat_id=GROUP_ID, chat_type="supergroup")
        assert mentioned["text"] == IN_FAQ[1][1]
        bot_message = telegram.messages[GROUP_ID][-1]["message"]
        replied = await ask(telegram, IN_FAQ[2][0], chat_id=GROUP_ID, chat_type="supergroup", reply_to=bot_message)
        assert replied["text"] == IN_FAQ[2][1]
        assert telegram.sent_texts(GROUP_ID) == [IN_FAQ[1][1], IN_FAQ[2][1]]  # the unaddressed text and sticker got nothing


async def test_a_photos_caption_is_its_question(telegram, redis_url, llmcore_url, prefix, seeded):
    """"怎么退货？" under a photo of the parcel was told the bot reads only text; a photo without a caption still is."""
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", faq_encoder="none")
    photo = [{"file_id": "p", "file_unique_id": "pu", "width": 10, "height": 10}]
    async with running_bot(settings, telegram):
        for caption, expected in ((IN_FAQ[0][0], IN_FAQ[0][1]), (IN_FAQ[2][0], IN_FAQ[2][1]), (None, texts("zh").text_only)):
            mark = len(telegram.calls)
            await telegram.push(message_update(photo=photo, **({"caption": caption} if caption else {})))
            _, sent = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark, timeout=20)
            assert sent["text"] == expected, caption


async def test_group_commands_named_for_the_bot_are_answered_and_counted_and_channel_adverts_are_not(
        telegram, redis_url, llmcore_url, prefix, seeded):
    """"/help@kefu_bot" is how a group addresses one bot among several: it got no answer. Commands the bot takes in a
    group without a mention (/end, /human) were never counted: 96 /end from one member were all answered, each holding
    an intake slot while it waited for Telegram's group limit. A channel's post that Telegram forwards into its
    discussion group by itself ("有问题请问 @kefu_bot") was answered as a question and logged."""
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", rate_limit_per_minute=3)
    async with running_bot(settings, telegram) as application:
        name, group = application.bot.username, {"chat_id": GROUP_ID, "chat_type": "supergroup"}
        advert = text_update(f"有问题请问 @{name}", **group)
        advert["message"].update(is_automatic_forward=True, sender_chat={"id": -100555, "type": "channel", "title": "青禾商城"})
        await telegram.push(advert)
        await telegram.push(text_update("/help@some_other_bot", **group))  # another bot's: neither answered nor counted
        assert (await ask(telegram, f"/help@{name}", **group))["text"] == texts("zh").help
        mark = len(telegram.calls)
        for _ in range(6):
            await telegram.push(text_update("/end", **group))  # 2 left of the 3 a minute
        await telegram.push(text_update(f"@{name} {IN_FAQ[0][0]}", user_id=USER_ID + 5, **group))  # another member, after them
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["text"] == IN_FAQ[0][1], since=mark)
        ended = [p["text"] for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == GROUP_ID]
        assert ended == [texts("zh").handoff_closed] * 2 + [IN_FAQ[0][1]]
        assert telegram.sent_texts(GROUP_ID)[0] == texts("zh").help  # nothing for the advert or the other bot's command


async def test_an_update_over_the_rate_limit_never_waits_for_its_chats_turn():
    """A burst from one chat: what the screen (the rate limit) refuses returns at once while the chat's first update
    is still running. Screened inside the handlers, each waited in the chat's queue first, holding one of
    the intake's 64 slots: a hundred forwarded messages held them all, and every other chat waited."""
    from telegram import Update

    from bot.app import PerChatOrder

    verdicts = iter([True] + [False] * 9)

    async def screen(update):
        return next(verdicts)

    order, release, ran = PerChatOrder(screen=screen), asyncio.Event(), []

    async def work(i):
        ran.append(i)
        await release.wait()

    updates = [Update.de_json({"update_id": i, **text_update(f"消息{i}")}, None) for i in range(10)]
    first = asyncio.create_task(order.do_process_update(updates[0], work(0)))
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*(order.do_process_update(u, work(i)) for i, u in enumerate(updates[1:], 1))), 5)
    assert ran == [0] and not first.done()  # the refused ones returned without waiting, and never ran
    release.set()
    await first


async def test_a_chats_updates_run_in_arrival_order_whatever_the_screens_latency():
    """The screen (the rate limit: a Redis round trip on one of the pool's connections) may answer a chat's second
    update before its first. The chat's order is taken when an update arrives, not when its screen answers: the first
    still runs first, a refused one in between holds up nobody, and other chats do not wait for this one."""
    from telegram import Update

    from bot.app import PerChatOrder

    delays = {0: 0.05, 1: 0.0, 2: 0.02, 3: 0.0, 4: 0.0}  # update 0's screen answers last
    refused = {2}

    async def screen(update):
        await asyncio.sleep(delays[update.update_id])
        return update.update_id not in refused

    order, ran = PerChatOrder(screen=screen), []

    async def work(i):
        ran.append(i)

    chat = [Update.de_json({"update_id": i, **text_update(f"消息{i}")}, None) for i in range(4)]
    other = Update.de_json({"update_id": 4, **text_update("别的聊天", user_id=USER_ID + 1)}, None)
    tasks = [asyncio.create_task(order.do_process_update(u, work(u.update_id))) for u in [*chat, other]]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [i for i in ran if i != 4] == [0, 1, 3]  # in arrival order; the refused one never ran
    assert ran.index(4) < ran.index(0)  # the other chat did not wait behind this chat's slow screen
    assert order._tails == {}  # nothing left behind once the chats are idle


async def test_a_cancelled_update_neither_cancels_nor_lets_anyone_overtake_the_one_ahead():
    """The intake cancels a task at shutdown: the update it cancels while it waits for its turn is not run, the one
    ahead of it is not cancelled with it, and the chat's next update still waits for that one."""
    from telegram import Update

    from bot.app import PerChatOrder

    order, release, ran = PerChatOrder(), asyncio.Event(), []

    async def work(i):
        ran.append(i)
        if i == 0:
            await release.wait()

    updates = [Update.de_json({"update_id": i, **text_update(f"消息{i}")}, None) for i in range(3)]
    first, second = (asyncio.create_task(order.do_process_update(u, work(i))) for i, u in enumerate(updates[:2]))
    await asyncio.sleep(0.01)
    second.cancel()
    third = asyncio.create_task(order.do_process_update(updates[2], work(2)))
    await asyncio.sleep(0.01)
    assert ran == [0] and not first.done() and second.cancelled() and not third.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert ran == [0, 2] and order._tails == {}


async def test_private_non_text_duplicates_and_long_answers(telegram, redis_url, llmcore_url, prefix, redis, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling")
    long_answer = "这是很长的回答。" * 700 + "<b>不是标签</b> & 完"  # 5,6xx characters, with HTML to escape
    await seeded.add("长回答测试问题", long_answer)
    async with running_bot(settings, telegram):
        mark = len(telegram.calls)
        await telegram.push(message_update(photo=[{"file_id": "p", "file_unique_id": "pu", "width": 1, "height": 1}]))
        _, params = await telegram.wait_for("sendMessage", since=mark)
        assert "文字" in params["text"]
        for nothing in ("👍", "？？", "\u200b\u200b"):  # nothing to look up: the help, not the model's fallback and a miss
            assert (await ask(telegram, nothing))["text"] == texts("zh").help

        update = text_update(IN_FAQ[0][0])
        update["update_id"] = 777
        mark = len(telegram.calls)
        await telegram.push(update)
        await telegram.push(update)  # redelivered
        await telegram.push(text_update(IN_FAQ[1][0]))  # answered after both were dealt with (one chat: in order)
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["text"] == IN_FAQ[1][1], since=mark)
        assert telegram.sent_texts(USER_ID)[4:] == [IN_FAQ[0][1], IN_FAQ[1][1]]  # the redelivery: no second answer

        mark = len(telegram.calls)
        await telegram.push(text_update("长回答测试问题"))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and "完" in p["text"], since=mark)
        parts = [p for m, p in telegram.calls[mark:] if m == "sendMessage"]
        assert len(parts) == 2 and all(len(p["text"]) <= 4096 for p in parts)  # the server also checks the visible length
        assert parts[0]["text"].endswith("。") and "&lt;b&gt;不是标签&lt;/b&gt; &amp; 完" in parts[1]["text"]
        assert "reply_markup" not in parts[0] and "👍" in buttons(parts[1])


async def test_flood_429_is_retried_and_the_answer_arrives(telegram, redis_url, llmcore_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling")
    async with running_bot(settings, telegram):
        telegram.flood(2, retry_after=1)
        reply = await ask(telegram, IN_FAQ[0][0])
        assert reply["text"] == IN_FAQ[0][1]


async def test_webhook_refuses_strangers_and_survives_garbage(telegram, redis_url, llmcore_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "webhook")
    async with running_bot(settings, telegram):
        body = json.dumps({"update_id": 1, **text_update(IN_FAQ[0][0])}).encode()
        assert await telegram.post_raw(body, secret=None) == 403
        assert await telegram.post_raw(body, secret="wrong") == 403
        assert await telegram.post_raw(b"{not json", secret=SECRET) == 400
        assert await telegram.post_raw(b"[1, 2]", secret=SECRET) == 400
        assert await telegram.post_raw(b'{"update_id": "x"}', secret=SECRET) == 400
        assert await telegram.post_raw(b'{"update_id": 5, "message": ' + b'"x' * (1 << 20) + b'"}', secret=SECRET) == 413
        assert await telegram.post_raw(b'{"update_id": 6, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", secret=SECRET) == 400
        assert await telegram.post_raw(b'{"update_id": 7, "x": ' + b"1" * 5000 + b"}", secret=SECRET) == 400  # past int()'s digits
        assert await post_with_raw_secret(settings, b"\xff\xfe", body) == 403  # not UTF-8: compared as bytes, no 500
        reply = await ask(telegram, IN_FAQ[0][0])  # the bot still works
        assert reply["text"] == IN_FAQ[0][1]
        assert [p["text"] for m, p in telegram.calls if m == "sendMessage"] == [IN_FAQ[0][1]]  # and answered nothing else


async def post_with_raw_secret(settings, secret: bytes, body: bytes) -> int:
    """POST to the webhook with a secret header of any bytes (clients refuse to send what is not text): the status."""
    host, port = settings.listen_host_port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST " + settings.webhook_path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"X-Telegram-Bot-Api-Secret-Token: " + secret + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    status = int((await reader.read()).split(b" ", 2)[1])
    writer.close()
    return status


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_updates_ptb_cannot_read_are_skipped_and_the_bot_goes_on(mode, telegram, redis_url, llmcore_url, prefix, seeded):
    # Telegram sends an update again until it is acknowledged: one PTB cannot read stopped polling for good
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, mode)
    async with running_bot(settings, telegram):
        await telegram.push({"update_id": 900, "message": {"message_id": 1, "text": "hi"}})  # no chat, no date
        await telegram.push({"update_id": 901, **text_update("hi"), "x": json.loads("[" * 600 + "]" * 600)})  # deep
        reply = await ask(telegram, IN_FAQ[0][0])
        assert reply["text"] == IN_FAQ[0][1]


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_a_lone_surrogate_is_answered_and_the_bot_goes_on(mode, telegram, redis_url, llmcore_url, prefix, seeded):
    # JSON may spell a lone surrogate ("\\ud800"), UTF-8 cannot hold it: one such message stopped the intake for good
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, mode)
    async with running_bot(settings, telegram):
        mark = len(telegram.calls)
        update = {"update_id": 4242, **text_update("\ud800" + IN_FAQ[0][0])}
        if mode == "webhook":
            assert await telegram.post_raw(json.dumps(update).encode(), secret=SECRET) == 200
        else:
            await telegram.push(update)
        _, params = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark, timeout=20)
        assert params["text"] == IN_FAQ[0][1]  # the broken character is U+FFFD: the question is still the FAQ's
        reply = await ask(telegram, IN_FAQ[1][0])  # and the bot goes on
        assert reply["text"] == IN_FAQ[1][1]


async def test_every_real_update_goes_through_the_webhook(telegram, redis_url, llmcore_url, prefix, redis, seeded, caplog):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "webhook", rate_limit_per_minute=1000)
    lines = shared_file("telegram_updates.jsonl").read_text(encoding="utf-8").splitlines()
    async with running_bot(settings, telegram):
        with caplog.at_level(logging.WARNING):
            for line in lines:
                status = await telegram.post_raw(line.encode(), secret=SECRET)
                assert status in (200, 400), line[:200]
            while await redis.xlen(f"{prefix}updates"):  # an entry leaves the stream once its handlers are done
                await asyncio.sleep(0.05)
        reply = await ask(telegram, IN_FAQ[0][0], chat_id=USER_ID)
        assert reply["text"] == IN_FAQ[0][1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_redis_down_answers_politely_and_recovers(telegram, llmcore_url, prefix, tmp_path):
    port = free_port()
    redis_proc = start_redis(port, tmp_path, persist=True)
    settings = settings_for(telegram, f"redis://127.0.0.1:{port}/0", llmcore_url, prefix, "polling")
    try:
        async with running_bot(settings, telegram):
            first = await ask(telegram, "怎么退货")  # the demo FAQ was seeded into the empty store
            assert "退" in first["text"]
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            down = await ask(telegram, "怎么退货")
            assert down["text"] == "服务暂时不可用，请稍后再试。"
            redis_proc = start_redis(port, tmp_path, persist=True)
            for _ in range(20):  # the pool reconnects by itself: no restart of the bot
                back = await ask(telegram, "怎么退货")
                if back["text"] != down["text"]:
                    break
                await asyncio.sleep(0.5)
            assert back["text"] == first["text"]
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


async def test_chats_run_concurrently_and_each_keeps_its_order(telegram, redis_url, prefix, seeded):
    runner, url, release = await slow_model()
    settings = settings_for(telegram, redis_url, url, prefix, "polling")
    try:
        async with running_bot(settings, telegram):
            other = USER_ID + 7
            await telegram.push(text_update("一个模型才知道的问题", chat_id=USER_ID))  # blocks on the slow model
            await telegram.push(text_update(IN_FAQ[1][0], chat_id=USER_ID))  # same chat: must wait its turn
            fast = await ask(telegram, IN_FAQ[0][0], chat_id=other, user_id=other)  # another chat is not held up
            assert fast["text"] == IN_FAQ[0][1] and telegram.sent_texts(USER_ID) == []
            release.set()
            await telegram.wait_for(lambda m, p: m == "sendMessage" and p["text"] == IN_FAQ[1][1])
            assert telegram.sent_texts(USER_ID) == [SLOW_ANSWER, IN_FAQ[1][1]]
    finally:
        await runner.cleanup()


async def test_rate_limit_too_long_unknown_command_reset_and_suggestions(telegram, redis_url, llmcore_url, prefix, redis, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", rate_limit_per_minute=7, max_message_chars=50)
    async with running_bot(settings, telegram):
        assert (await ask(telegram, "/nosuchcommand"))["text"].startswith("没有这个命令")
        assert "太长" in (await ask(telegram, "长" * 51))["text"]
        await ask(telegram, IN_FAQ[0][0])
        assert await redis.llen(f"{prefix}hist:{USER_ID}") == 2
        assert (await ask(telegram, "/reset"))["text"] == "好的，已清除对话上下文。"
        assert await redis.llen(f"{prefix}hist:{USER_ID}") == 0 and await redis.xlen(f"{prefix}log") == 1  # the log is kept
        partial = await ask(telegram, "寄快递要钱吗")  # close to "运费多少钱？" but not sure enough to answer from the FAQ
        assert "运费多少钱？" in buttons(partial) and "您是不是想问" in partial["text"]
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(partial)["运费多少钱？"], message=telegram.messages[USER_ID][-1]))
        _, chosen = await telegram.wait_for("sendMessage", since=mark)
        assert chosen["text"] == IN_FAQ[1][1]
        assert (await ask(telegram, IN_FAQ[2][0]))["text"] == IN_FAQ[2][1]  # the 7th update this minute (the tap counts): fine
        notice = await ask(telegram, IN_FAQ[2][0])  # the 8th
        assert notice["text"] == "You're sending messages too fast. Please wait a minute."  # in the language of the message
        mark = len(telegram.calls)
        await telegram.push(text_update(IN_FAQ[2][0]))
        await telegram.push(callback_update(buttons(partial)["运费多少钱？"], message=telegram.messages[USER_ID][-2]))  # a tap too
        _, tap = await telegram.wait_for("answerCallbackQuery", since=mark)  # answered, so that its button stops spinning
        assert not [m for m, _ in telegram.calls[mark:] if m == "sendMessage"] and not tap.get("text")  # silence after the notice


async def test_a_burst_of_many_chats_all_get_real_answers(telegram, redis_url, llmcore_url, prefix, seeded):
    """More updates at once than Redis connections in the pool: they wait for a connection, none is told "unavailable"."""
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "webhook", outbound_per_second=0)
    async with running_bot(settings, telegram):
        chats = [USER_ID + 100 + i for i in range(150)]
        statuses = await asyncio.gather(*(telegram.push(text_update(IN_FAQ[i % 3][0], chat_id=c, user_id=c)) for i, c in enumerate(chats)))
        assert set(statuses) == {200}
        await telegram.wait_for(lambda m, p: sum(1 for mm, _ in telegram.calls if mm == "sendMessage") >= len(chats), timeout=60)
        assert [telegram.sent_texts(c) for c in chats] == [[IN_FAQ[i % 3][1]] for i in range(len(chats))]


async def test_a_failure_after_start_up_stops_everything_and_the_bot_starts_again(telegram, redis_url, llmcore_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "webhook")
    application = build_application(settings)
    with socket.socket() as taken:  # the webhook's port is taken: found only once PTB has started
        taken.bind(settings.listen_host_port)
        taken.listen()
        with pytest.raises(OSError):  # that error, not "This Application is still running!"
            await run_webhook(application, settings, asyncio.Event())
    assert not application.running and application.bot_data.services is None
    async with running_bot(settings, telegram, application):
        assert (await ask(telegram, IN_FAQ[0][0]))["text"] == IN_FAQ[0][1]


async def test_a_token_revoked_while_polling_ends_the_run_cleanly(telegram, redis_url, llmcore_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling")
    application = build_application(settings)
    run = asyncio.create_task(run_polling(application, asyncio.Event()))
    await telegram.wait_for("getUpdates", timeout=20)
    assert (await ask(telegram, IN_FAQ[0][0]))["text"] == IN_FAQ[0][1]
    token, telegram.token = telegram.token, "123456:REVOKED"  # what @BotFather's /revoke does
    await telegram.push(text_update("大家好", chat_type="supergroup", chat_id=GROUP_ID))  # ends the long poll in flight
    with pytest.raises(InvalidToken):  # the run ends (it used to poll on, answering nothing)
        await asyncio.wait_for(run, 30)
    assert not application.running and application.bot_data.services is None
    telegram.token = token
    async with running_bot(settings, telegram, application):
        assert (await ask(telegram, IN_FAQ[1][0]))["text"] == IN_FAQ[1][1]
