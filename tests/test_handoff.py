"""Human handoff both ways: the operators' group gets the request and the transcript, a reply reaches the
user and the training log, the bot keeps quiet meanwhile, several handoffs stay apart, and the faults."""
import asyncio
import time

import pytest

from bot.handoff import Handoffs
from bot.operators import requests_human

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


def offer_of(params: dict) -> dict[str, str]:
    return {k: v for k, v in buttons(params).items() if (v or "").startswith("offer:")}


async def test_asking_for_a_person_in_words_opens_a_handoff_but_artificial_intelligence_does_not(
        telegram, redis_url, prefix, redis, seeded):
    down = "http://127.0.0.1:9"  # no model: what is not a request gets the fallback
    async with running_bot(operator_settings(telegram, redis_url, down, prefix, llmcore_timeout_s=2), telegram):
        alice, bob = USER_ID, USER_ID + 1
        mark = len(telegram.calls)
        assert (await ask(telegram, "人工智能是什么", chat_id=alice, user_id=alice))["text"].startswith("抱歉")
        assert (await ask(telegram, "你是人工客服吗？", chat_id=alice, user_id=alice))["text"].startswith("我是自动客服助手")
        assert not [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == OPERATORS]
        assert await Handoffs(redis, prefix, 60).get(alice) is None

        mark = len(telegram.calls)
        assert "转接人工客服" in (await ask(telegram, "包裹还没到，我要转人工", chat_id=alice, user_id=alice))["text"]
        _, request = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "👤 包裹还没到，我要转人工" in request["text"] and "👤 人工智能是什么" in request["text"]

        reply = await ask(telegram, "Can I talk to a human agent please?", chat_id=bob, user_id=bob, language_code="en")
        assert reply["text"].startswith("A human operator has been asked to join")
        assert (await Handoffs(redis, prefix, 60).get(bob))["lang"] == "en"


async def test_two_misses_in_a_row_bring_one_offer_of_a_colleague(telegram, redis_url, prefix, redis, seeded):
    down = "http://127.0.0.1:9"
    async with running_bot(operator_settings(telegram, redis_url, down, prefix, llmcore_timeout_s=2), telegram):
        alice, bob = USER_ID, USER_ID + 1
        start = len(telegram.calls)
        await ask(telegram, "我的包裹三天没动了", chat_id=alice, user_id=alice)  # one fallback: no offer yet
        await ask(telegram, IN_FAQ[0][0], chat_id=alice, user_id=alice)  # an answer: the count starts again
        await ask(telegram, "还是没动", chat_id=alice, user_id=alice)
        mark = len(telegram.calls)
        await ask(telegram, "到底在哪", chat_id=alice, user_id=alice)  # the second fallback in a row
        _, offer = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice and offer_of(p), since=mark)
        to_alice = [p for m, p in telegram.calls[start:] if m == "sendMessage" and p["chat_id"] == alice]
        assert [bool(offer_of(p)) for p in to_alice] == [False] * 4 + [True]  # asked once, after the second fallback in a row
        assert offer["text"].startswith("看来我没能帮上忙") and await Handoffs(redis, prefix, 60).get(alice) is None

        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(offer)["好的，请转人工"], user_id=bob, message=telegram.messages[alice][-1]))
        _, forged = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert forged["text"] == "这个按钮已失效。" and await Handoffs(redis, prefix, 60).get(alice) is None
        await telegram.push(callback_update(buttons(offer)["好的，请转人工"], user_id=alice, message=telegram.messages[alice][-1]))
        _, request = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "👤 到底在哪" in request["text"]
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice and "转接" in p["text"], since=mark)

        answer = await ask(telegram, IN_FAQ[1][0], chat_id=bob, user_id=bob)  # 👎 on an answer, then a fallback
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(answer)["👎"], user_id=bob, message=telegram.messages[bob][-1]))
        await telegram.wait_for("answerCallbackQuery", since=mark)
        await ask(telegram, "我的包裹三天没动了", chat_id=bob, user_id=bob)
        _, offer = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == bob and offer_of(p), since=mark)
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(offer)["不用了"], user_id=bob, message=telegram.messages[bob][-1]))
        _, declined = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == bob, since=mark)
        assert declined["text"].startswith("好的，您可以继续问我")
        assert await Handoffs(redis, prefix, 60).get(bob) is None
        await ask(telegram, "还是没动", chat_id=bob, user_id=bob)  # one more fallback: the count started again after the offer
        await ask(telegram, IN_FAQ[0][0], chat_id=bob, user_id=bob)  # a follow-up: anything the fallback brought came before
        to_bob = [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == bob]
        assert [bool(offer_of(p)) for p in to_bob] == [False] * 3
        assert not [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == OPERATORS]


async def test_done_asks_for_a_rating_stored_once_and_shown_in_stats(telegram, redis_url, prefix, redis, seeded):
    down, admin = "http://127.0.0.1:9", 4242
    settings = operator_settings(telegram, redis_url, down, prefix, llmcore_timeout_s=2, admin_ids=frozenset({admin}))
    async with running_bot(settings, telegram):
        alice, bob, carol = USER_ID, USER_ID + 1, USER_ID + 2
        await ask(telegram, IN_FAQ[0][0], chat_id=alice, user_id=alice)
        await ask(telegram, IN_FAQ[1][0], chat_id=carol, user_id=carol)  # the bot answered: resolved without a handoff
        await ask(telegram, "/human", chat_id=alice, user_id=alice)
        alice_request = telegram.messages[OPERATORS][-1]["message"]
        await ask(telegram, "/human", chat_id=bob, user_id=bob)
        await ask(telegram, "/end", chat_id=bob, user_id=bob)  # closed by the customer: no rating asked, none taken

        mark = len(telegram.calls)
        await operator_says(telegram, "您好，请问有什么可以帮您？", alice_request)
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice, since=mark)
        mark = len(telegram.calls)
        await telegram.push(text_update("/done", chat_id=OPERATORS, user_id=9001, chat_type="supergroup", reply_to=alice_request))
        _, note = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice, since=mark)
        assert note["text"] == "人工客服会话已结束，接下来由我继续为您服务。"
        _, prompt = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice and "打分" in p["text"],
                                            since=mark)
        rate = buttons(prompt)
        assert list(rate) == ["1", "2", "3", "4", "5"]
        record_id = rate["4"].split(":")[1]
        record = f"{prefix}handoff:record:{record_id}"
        prompt_message = telegram.messages[alice][-1]

        bob_record = next(r for r in await redis.zrange(f"{prefix}handoffs:closed", 0, -1) if r != record_id)
        for data, user in ((rate["5"], bob), (f"csat:{record_id}:6", alice), (f"csat:{record_id}:0", alice),
                           ("csat:999:5", alice), (f"csat:{bob_record}:5", bob), (f"csat:{record_id}:x", alice)):
            mark = len(telegram.calls)
            await telegram.push(callback_update(data, user_id=user, message=prompt_message))
            _, answer = await telegram.wait_for("answerCallbackQuery", since=mark)
            assert answer["text"] == "这个按钮已失效。", data
        assert "rating" not in await redis.hgetall(record) and "rating" not in await redis.hgetall(f"{prefix}handoff:record:{bob_record}")

        mark = len(telegram.calls)
        await telegram.push(callback_update(rate["4"], user_id=alice, message=prompt_message))
        _, answer = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert answer["text"] == "感谢您的评价！" and (await redis.hgetall(record))["rating"] == "4"
        mark = len(telegram.calls)
        await telegram.push(callback_update(rate["1"], user_id=alice, message=prompt_message))  # once only
        _, answer = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert answer["text"] == "这个按钮已失效。" and (await redis.hgetall(record))["rating"] == "4"

        mark = len(telegram.calls)
        await telegram.push(text_update("/stats", chat_id=admin, user_id=admin))
        _, stats = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == admin, since=mark)
        assert "Handoffs (7 days): 2" in stats["text"] and "CSAT: 100% rated 4-5, mean 4.0 (1 ratings)" in stats["text"]
        assert "First operator reply: median " in stats["text"] and "Resolved without a handoff: 33% of 3 conversations" in stats["text"]


async def test_waiting_customers_hear_their_place_in_the_queue(telegram, redis_url, prefix, redis, seeded):
    async with running_bot(operator_settings(telegram, redis_url, "http://127.0.0.1:9", prefix), telegram):
        alice, bob, carol = USER_ID, USER_ID + 1, USER_ID + 2
        assert (await ask(telegram, "/human", chat_id=alice, user_id=alice))["text"].endswith("您目前排在第 1 位，人工同事会尽快回复您。")
        alice_request = telegram.messages[OPERATORS][-1]["message"]
        reply = await ask(telegram, "/human", chat_id=bob, user_id=bob, language_code="en")
        assert reply["text"].endswith("You are number 2 in the queue; a colleague will answer shortly.")

        mark = len(telegram.calls)
        await operator_says(telegram, "您好！", alice_request)  # alice is answered: out of the queue
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == alice, since=mark)
        assert (await ask(telegram, "/human", chat_id=carol, user_id=carol))["text"].endswith("排在第 2 位，人工同事会尽快回复您。")
        reply = await ask(telegram, "/human", chat_id=bob, user_id=bob, language_code="en")
        assert reply["text"].endswith("You are number 1 in the queue; a colleague will answer shortly.")
        assert (await ask(telegram, "/human", chat_id=alice, user_id=alice))["text"] == "已经在为您转接人工客服了，请稍候；" \
            "您的消息会转给客服人员。发送 /end 结束人工服务。"  # answered already: no place in a queue
        await ask(telegram, "/end", chat_id=bob, user_id=bob)
        assert (await ask(telegram, "/human", chat_id=carol, user_id=carol))["text"].endswith("排在第 1 位，人工同事会尽快回复您。")


WORDS = ("人工", "转人工", "客服", "真人", "human", "agent", "operator")


@pytest.mark.parametrize("text", ["转人工", "人工客服", "包裹还没到，我要转人工", "有没有真人", "找个真人聊聊", "联系客服",
                                  "在线客服在哪里？", "Can I talk to a human agent please?", "I'd like to speak with an operator now"])
def test_a_request_for_a_person_in_words(text):
    assert requests_human(text, WORDS)


@pytest.mark.parametrize("text", ["人工智能是什么", "人工智能客服", "你们招聘客服吗？", "客服电话是多少？", "请问客服几点上班",
                                  "human resources department", "agent smith", "我要退货"])
def test_a_question_that_holds_such_a_word_is_not_a_request(text):
    assert not requests_human(text, WORDS)
