"""Nothing acknowledged is lost: the bot killed with -9 in the middle of a burst, restarted, everything delivered
again by Telegram — every chat answered once. And a Redis restart costs no request."""
import asyncio
import os
import signal
import subprocess
import sys

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot import intake
from bot.services import redis_client

from .botapi import USER_ID, text_update
from .botkit import IN_FAQ, SECRET, running_bot, settings_for
from .conftest import REPO, free_port, start_redis

CHATS = 60


async def start_bot(telegram, env: dict, log) -> subprocess.Popen:
    mark = len(telegram.calls)
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        await telegram.wait_for("setWebhook", since=mark, timeout=60)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def answered(telegram) -> dict[int, int]:
    counts: dict[int, int] = {}
    for method, params in telegram.calls:
        if method == "sendMessage":
            counts[params["chat_id"]] = counts.get(params["chat_id"], 0) + 1
    return counts


async def test_a_bot_killed_mid_burst_answers_every_acknowledged_update_once(telegram, redis_url, prefix, seeded, tmp_path):
    port = free_port()
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_BASE": telegram.base, "REDIS_URL": redis_url,
           "REDIS_PREFIX": prefix, "LLMCORE_URL": f"http://127.0.0.1:{free_port()}", "WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
           "WEBHOOK_LISTEN": f"127.0.0.1:{port}", "WEBHOOK_SECRET": SECRET, "REPLICA_NAME": "crash-test",
           "RATE_LIMIT_PER_MINUTE": "1000", "OUTBOUND_PER_SECOND": "20"}  # the limiter makes the burst last ~3 s
    updates = [{**text_update(IN_FAQ[i % 3][0], chat_id=10_000 + i, user_id=10_000 + i), "update_id": 50_000 + i} for i in range(CHATS)]
    with open(tmp_path / "bot.log", "w") as log:
        bot = await start_bot(telegram, env, log)
        try:
            assert [await telegram.push(u) for u in updates] == [200] * CHATS  # all acknowledged
            while sum(answered(telegram).values()) < 25:  # past the limiter's first second (a bucket of 20 at once)
                await asyncio.sleep(0.002)
            # Between two answers (one every 50 ms), as a crash comes at any moment, not in the milliseconds between
            # an answer reaching Telegram and the bot marking it done: the one window where an answer can come twice.
            await asyncio.sleep(0.02)
            bot.send_signal(signal.SIGKILL)
            bot.wait(timeout=10)
            before = answered(telegram)
            assert 25 <= len(before) < CHATS, before  # killed in the middle of the burst
            bot = await start_bot(telegram, env, log)
            assert [await telegram.push(u) for u in updates] == [200] * CHATS  # Telegram delivers everything again
            last = {**text_update("最后一个问题：" + IN_FAQ[0][0], chat_id=99_999, user_id=99_999), "update_id": 60_000}
            await telegram.push(last)
            await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == 99_999, timeout=60)
            for _ in range(300):  # the backlog of the killed process goes first, but the last update may overtake it
                if len(answered(telegram)) == CHATS + 1:
                    break
                await asyncio.sleep(0.1)
        finally:
            bot.send_signal(signal.SIGTERM)
            bot.wait(timeout=30)
    counts = answered(telegram)
    assert sorted(counts) == sorted([u["message"]["chat"]["id"] for u in updates] + [99_999]), (tmp_path / "bot.log").read_text()[-3000:]
    # None twice but in at-least-once's one window (an answer Telegram got, killed before the bot heard so): a
    # loaded machine's event-loop lag can put an answer or two there even between two sends. Without the stream's
    # duplicate check and done marks, every chat answered before the kill (25 or more) would be answered twice.
    assert len([c for c, n in counts.items() if n != 1]) <= 2, counts
    for i, u in enumerate(updates):
        assert telegram.sent_texts(u["message"]["chat"]["id"]) == [IN_FAQ[i % 3][1]]


@pytest.mark.parametrize("retried", [True, False])
async def test_a_connection_from_before_a_redis_restart_costs_no_request(tmp_path, retried):
    port = free_port()
    proc = start_redis(port, tmp_path, persist=True)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_client(url) if retried else Redis(connection_pool=BlockingConnectionPool.from_url(url, decode_responses=True))
    try:
        await client.set("kept", "yes")  # a pooled connection now exists
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_redis(port, tmp_path, persist=True)
        if retried:
            assert await client.get("kept") == "yes"  # AOF (fsync always) kept it, and the stale connection was replaced
        else:  # what the bot did before: the first command after the restart failed
            with pytest.raises(RedisConnectionError):
                await client.get("kept")
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(timeout=10)


async def test_an_answer_the_bot_api_did_not_take_is_sent_again_later(telegram, redis_url, prefix, seeded, llmcore_url):
    """One 502 from the Bot API (a proxy, a blip) on the answer: the handler was over, the update acknowledged and the
    question never answered. Now it is handled again a second later, and answered once."""
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", faq_encoder="none")
    async with running_bot(settings, telegram):
        telegram.unreachable_for["sendMessage"] = 1
        mark = len(telegram.calls)
        await telegram.push(text_update(IN_FAQ[0][0]))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark, timeout=20)
        await asyncio.sleep(1.5)  # nothing more comes
    assert ("unreachable:sendMessage", {}) in telegram.calls[mark:]
    assert telegram.sent_texts(USER_ID) == [IN_FAQ[0][1]]


async def test_a_message_tried_again_is_not_rate_limited_by_its_own_tries(telegram, redis_url, prefix, seeded, llmcore_url,
                                                                        monkeypatch):
    """Each try passed the per-user rate limit again: three 502s on the answer with a limit of 2 a minute, and the
    question was dropped as over the limit, never answered."""
    monkeypatch.setattr(intake, "AGAIN_S", (0.1, 60.0))
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", faq_encoder="none", rate_limit_per_minute=2)
    async with running_bot(settings, telegram):
        telegram.unreachable_for["sendMessage"] = 3
        mark = len(telegram.calls)
        await telegram.push(text_update(IN_FAQ[0][0]))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark, timeout=20)
    assert telegram.sent_texts(USER_ID) == [IN_FAQ[0][1]]


async def test_a_bad_request_on_the_answer_is_not_tried_again(telegram, redis_url, prefix, seeded, llmcore_url, monkeypatch):
    """PTB's BadRequest is a NetworkError: "message to be replied not found" (the customer deleted the question) would
    fail every try, each asking the model and logging the exchange again. It is given up at once."""
    monkeypatch.setattr(intake, "AGAIN_S", (0.1, 60.0))
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", faq_encoder="none")
    async with running_bot(settings, telegram) as application:
        telegram.refused_for["sendMessage"] = 1
        mark = len(telegram.calls)
        await telegram.push(text_update(IN_FAQ[0][0]))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark, timeout=20)
        await asyncio.sleep(1.5)  # tries would have come at 0.1, 0.3, 0.7 and 1.5 s
        log = application.bot_data.services.log
        assert [m for m, p in telegram.calls[mark:] if m == "sendMessage"] == ["sendMessage"]
        assert len([e async for _, e in log.entries()]) == 1 and await application.bot_data.services.intake.pending() == 0
