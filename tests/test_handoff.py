"""Human handoff both ways: the operators' group gets the request and the transcript, a reply reaches the
user and the training log, the bot keeps quiet meanwhile, several handoffs stay apart, and the faults."""
import asyncio
import time

from bot.handoff import Handoffs

from .botapi import USER_ID, callback_update, text_update
from .botkit import IN_FAQ, ask, buttons, running_bot, settings_for

OPERATORS = -100777


def operator_settings(telegram, redis_url, llmcore_url, prefix, **extra):
    return settings_for(telegram, redis_url, llmcore_url, prefix, "polling", operator_chat_id=OPERATORS, **extra)


async def operator_says(telegram, text: str, reply_to: dict, operator_id: int = 9001) -> None:
    await telegram.push(text_update(text, chat_id=OPERATORS, user_id=operator_id, chat_type="supergroup", reply_to=reply_to))


async def test_handoff_both_ways_and_the_answer_becomes_training_data(telegram, redis_url, prefix, redis, seeded):
    down = "http://127.0.0.1:9"  # no model: the fallback offers the human button
    async with running_bot(operator_settings(telegram, redis_url, down, prefix, llmcore_timeout_s=2), telegram):
        alice, bob = USER_ID, USER_ID + 1
        fallback = await ask(telegram, "我的包裹三天没动了", chat_id=alice, user_id=alice)
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(fallback)["人工客服"], user_id=alice, message=telegram.messages[alice][-1]))
        _, request = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "我的包裹三天没动了" in request["text"] and f"id {alice}" in request["text"]
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice and "转接" in p["text"], since=mark)
        alice_request = telegram.messages[OPERATORS][-1]["message"]

        await ask(telegram, "订单号是多少都行吗", chat_id=bob, user_id=bob)
        await ask(telegram, "/human", chat_id=bob, user_id=bob)
        bob_request = telegram.messages[OPERATORS][-1]["message"]

        mark = len(telegram.calls)
        await telegram.push(text_update("还在吗？", chat_id=alice, user_id=alice))  # while open: relayed, the bot is quiet
        _, relayed = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "还在吗？" in relayed["text"]
        await telegram.push(callback_update("x:stale", user_id=alice))  # handled after the relayed text (one chat, in order)
        await telegram.wait_for("answerCallbackQuery", since=mark)
        assert not [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == alice]

        mark = len(telegram.calls)
        await operator_says(telegram, "您好，包裹在中转站，明天送达。", alice_request)
        await operator_says(telegram, "订单号在“我的订单”里。", bob_request)
        _, to_alice = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice, since=mark)
        _, to_bob = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == bob, since=mark)
        assert to_alice["text"] == "👩‍💼 人工客服：您好，包裹在中转站，明天送达。"
        assert to_bob["text"] == "👩‍💼 人工客服：订单号在“我的订单”里。"
        for _ in range(50):  # the answer is logged right after it is sent
            entries = [e for _, e in await redis.xrange(f"{prefix}log") if e["source"] == "operator"]
            if len(entries) == 2:
                break
            await asyncio.sleep(0.05)
        assert {(e["question"], e["answer"]) for e in entries} == {("还在吗？", "您好，包裹在中转站，明天送达。"),
                                                                   ("订单号是多少都行吗", "订单号在“我的订单”里。")}

        assert (await ask(telegram, "/end", chat_id=alice, user_id=alice))["text"] == "人工客服会话已结束，接下来由我继续为您服务。"
        assert (await ask(telegram, IN_FAQ[0][0], chat_id=alice, user_id=alice))["text"] == IN_FAQ[0][1]  # the bot is back
        mark = len(telegram.calls)
        await operator_says(telegram, "还有别的问题吗？", alice_request)  # too late: closed
        _, late = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "closed" in late["text"]

        mark = len(telegram.calls)
        await telegram.push(text_update("/done", chat_id=OPERATORS, user_id=9001, chat_type="supergroup", reply_to=bob_request))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == bob and "结束" in p["text"], since=mark)


async def test_replies_to_other_messages_and_a_lost_operators_group(telegram, redis_url, llmcore_url, prefix, redis, seeded):
    async with running_bot(operator_settings(telegram, redis_url, llmcore_url, prefix), telegram):
        await telegram.push(text_update("随便聊聊", chat_id=OPERATORS, user_id=9001, chat_type="supergroup"))
        some_message = {"message_id": 5, "date": int(time.time()), "chat": {"id": OPERATORS, "type": "supergroup", "title": "ops"},
                        "text": "hello"}
        mark = len(telegram.calls)
        await operator_says(telegram, "给谁的？", some_message)
        _, said = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "not a handoff message" in said["text"]

        telegram.forbid(OPERATORS)
        reply = await ask(telegram, "/human")
        assert reply["text"].startswith("抱歉，目前没有在线的人工客服")
        assert await Handoffs(redis, prefix, 60).get(USER_ID) is None  # nothing left open


async def test_idle_handoffs_are_found(redis, prefix):
    handoffs = Handoffs(redis, prefix, idle_s=1)
    assert await handoffs.open(1, 1, "q") and not await handoffs.open(1, 1, "q")
    await handoffs.open(2, 2, "q")
    await asyncio.sleep(0.6)
    await handoffs.touch(2)
    await asyncio.sleep(0.6)
    assert await handoffs.idle() == [1]
    await handoffs.link(555, 1)
    await handoffs.forget_chat(1)
    assert await handoffs.get(1) is None and await handoffs.chat_for(555) is None and await handoffs.idle() == []


async def test_a_late_message_does_not_bring_a_closed_handoff_back(redis, prefix):
    handoffs = Handoffs(redis, prefix, idle_s=60)
    assert await handoffs.open(7, 7, "我的手机是13812345678")
    assert (await handoffs.get(7))["question"] == "我的手机是[PHONE]"  # scrubbed like the training log
    assert await handoffs.close(7, "done")
    await handoffs.touch(7, question="还在吗？")  # relayed while /done closed it
    assert await handoffs.get(7) is None and not await redis.exists(f"{prefix}handoff:7") and await handoffs.idle() == []
    assert await handoffs.open(7, 7, "again")  # and it can be opened anew
