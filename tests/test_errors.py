"""The one error path (bot/errors.py) end to end: real PTB against the local Bot API server, real Redis. Redis lost in
the middle of an answer: the customer hears "temporarily unavailable" once and gets the real answer once Redis is back;
a bug: "something went wrong"; llmcore's admin API away: the admin reads why. Admins get one notice per kind, with
the question scrubbed and no secret."""
import asyncio

import pytest

from bot.pipeline import Pipeline

from .botapi import USER_ID, callback_update, text_update
from .botkit import SLOW_ANSWER, ask, running_bot, settings_for, slow_model
from .conftest import free_port, start_redis

ADMIN = 777
UNAVAILABLE = "服务暂时不可用，请稍后再试。"
PHONES = ("13812345678", "13987654321")


def texts_to(telegram, chat_id: int) -> list[str]:
    """What the bot sent to a chat, first lines only (a model answer may end with "did you mean" buttons)."""
    return [text.split("\n")[0] for text in telegram.sent_texts(chat_id)]


async def test_redis_lost_mid_answer_is_told_once_and_answered_when_back(telegram, prefix, tmp_path):
    port = free_port()
    redis_proc = start_redis(port, tmp_path, persist=True)
    model, url, release = await slow_model()
    settings = settings_for(telegram, f"redis://127.0.0.1:{port}/0", url, prefix, "polling", admin_ids=str(ADMIN))
    chats = [USER_ID, USER_ID + 1]
    try:
        async with running_bot(settings, telegram):
            mark = len(telegram.calls)
            for chat, phone in zip(chats, PHONES):  # both wait for the model: read from the stream, not yet answered
                await telegram.push(text_update(f"我的电话是{phone}，包裹到哪了", chat_id=chat, user_id=chat))
            for chat in chats:
                await telegram.wait_for(lambda m, p, c=chat: m == "sendChatAction" and p["chat_id"] == c, since=mark)
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            release.set()  # the answers come, and Redis is not there to record them
            for chat in chats:
                await telegram.wait_for(lambda m, p, c=chat: m == "sendMessage" and p["chat_id"] == c, since=mark, timeout=20)
                assert texts_to(telegram, chat) == [UNAVAILABLE]
            notices = telegram.sent_texts(ADMIN)  # sent before the customers were told: all there is
            assert len(notices) == 1, notices
            assert "Redis unavailable" in notices[0] and "我的电话是[PHONE]，包裹到哪了" in notices[0]
            assert not any(phone in notices[0] for phone in PHONES) and telegram.token not in notices[0]

            redis_proc = start_redis(port, tmp_path, persist=True)  # its AOF kept the updates, still pending
            for chat in chats:
                await telegram.wait_for(lambda m, p, c=chat: m == "sendMessage" and p["chat_id"] == c and p["text"].startswith(SLOW_ANSWER),
                                        since=mark, timeout=30)
            follow_up = await ask(telegram, "/help")  # handled after everything before it in this chat
            assert texts_to(telegram, USER_ID) == [UNAVAILABLE, SLOW_ANSWER, follow_up["text"].split("\n")[0]]  # told once, answered once
            assert texts_to(telegram, USER_ID + 1) == [UNAVAILABLE, SLOW_ANSWER]
    finally:
        await model.cleanup()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


async def test_a_bug_says_something_went_wrong_and_admins_hear_of_it_once(telegram, redis_url, llmcore_url, prefix, seeded,
                                                                           monkeypatch):
    async def broken(self, chat_id, user_id, question, lang):
        raise RuntimeError(f"bug near {question} with {telegram.token}")

    monkeypatch.setattr(Pipeline, "answer", broken)  # a fault in Kefu's own code, wherever it is
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", admin_ids=str(ADMIN))
    async with running_bot(settings, telegram):
        first = await ask(telegram, f"我的电话是{PHONES[0]}，能退货吗")
        second = await ask(telegram, "Where is my parcel?")
        assert first["text"] == "抱歉，出了点问题，请稍后再试。"
        assert second["text"] == "Sorry, something went wrong. Please try again later."
        notices = telegram.sent_texts(ADMIN)
        assert len(notices) == 1, notices  # the second bug of the kind is in the logs only
        assert "RuntimeError" in notices[0] and "bot/" in notices[0] and "[PHONE]" in notices[0]
        assert PHONES[0] not in notices[0] and telegram.token not in notices[0]
        mark = len(telegram.calls)
        await telegram.push(callback_update("x:stale"))  # answered after both questions' handling is over
        await telegram.wait_for("answerCallbackQuery", since=mark)
        assert len(texts_to(telegram, USER_ID)) == 2  # a bug is not retried: one answer per question


async def test_llmcore_admin_api_away_the_admin_reads_why(telegram, redis_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, f"http://127.0.0.1:{free_port()}", prefix, "polling", admin_ids=str(ADMIN),
                            llmcore_admin_token="t0ken", llmcore_timeout_s=2)
    async with running_bot(settings, telegram):
        models = await ask(telegram, "/models", chat_id=ADMIN, user_id=ADMIN)
        assert models["text"].startswith("Not done: llmcore unreachable")
        mark = len(telegram.calls)
        await telegram.push(callback_update("job:promote:20260101-000000-001", user_id=ADMIN, chat_id=ADMIN))
        _, alert = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert alert["text"].startswith("Not done: llmcore unreachable") and alert["show_alert"] is True
        assert texts_to(telegram, ADMIN) == [models["text"]]  # no notice: the admin who asked was told


async def test_a_bot_api_not_up_yet_is_waited_for_and_a_wrong_token_is_not(telegram, redis_url, prefix, seeded):
    """Started before its Bot API (compose, a reboot): the bot retries getMe instead of exiting, then answers."""
    from telegram.error import InvalidToken

    from bot.app import build_application, run_polling

    from .conftest import FAQ_PAIRS

    settings = settings_for(telegram, redis_url, f"http://127.0.0.1:{free_port()}", prefix, "polling")
    telegram.unreachable = 3  # 502 Bad Gateway, three times
    async with running_bot(settings, telegram):
        assert [m for m, _ in telegram.calls[:4]] == ["unreachable:getMe"] * 3 + ["getMe"]
        assert (await ask(telegram, FAQ_PAIRS[0][0]))["text"] == FAQ_PAIRS[0][1]
    with pytest.raises(InvalidToken):  # a wrong token ends the bot at once, it is not retried
        await asyncio.wait_for(run_polling(build_application(settings, token="999:WRONG")), 10)
