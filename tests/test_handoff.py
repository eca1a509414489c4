"""Human handoff both ways: the operators' group gets the request and the transcript, a reply reaches the
user and the training log, the bot keeps quiet meanwhile, several handoffs stay apart, and the faults."""
import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bot.handoff import Handoffs
from bot.operators import requests_human
from bot.texts import texts

from .botapi import USER_ID, callback_update, message_update, text_update
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


async def test_done_for_a_customer_who_blocked_the_bot_closes_and_says_so(telegram, redis_url, llmcore_url, prefix, redis, seeded):
    async with running_bot(operator_settings(telegram, redis_url, llmcore_url, prefix), telegram):
        await ask(telegram, "/human")
        request = telegram.messages[OPERATORS][-1]["message"]
        telegram.forbid(USER_ID)  # the customer blocked the bot: sending there answers 403
        mark = len(telegram.calls)
        await telegram.push(text_update("/done", chat_id=OPERATORS, user_id=9001, chat_type="supergroup", reply_to=request))
        _, note = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert note["text"].startswith("Closed the handoff") and await redis.hgetall(f"{prefix}handoff:{USER_ID}") == {}


async def test_a_message_past_telegrams_length_once_relayed_reaches_the_operators_in_parts(telegram, redis_url, llmcore_url,
                                                                                            prefix, seeded):
    """2,000 emoji (4,000 UTF-16 units, as Telegram counts) under a long name: one relay would be refused, and the bot
    would answer the customer itself in the middle of a handoff. Longer than MAX_MESSAGE_CHARS too (500 here): the
    limit is the bot's own answering's, and a customer with an operator was told "too long" instead of being heard."""
    async with running_bot(operator_settings(telegram, redis_url, llmcore_url, prefix, max_message_chars=500), telegram):
        name = "很长的名字" * 20
        await telegram.push(text_update("/human", first_name=name))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS)
        mark = len(telegram.calls)
        await telegram.push(text_update("😀" * 2000, first_name=name))
        _, last = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS and p["text"].endswith("😀"),
                                          since=mark)
        relayed = [p["text"] for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == OPERATORS]
        assert len(relayed) == 2 and "".join(relayed).count("😀") == 2000
        assert not [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == USER_ID and "😀" not in p["text"]
                    and "转接" not in p["text"]]  # the bot did not answer it itself
        mark = len(telegram.calls)
        await operator_says(telegram, "收到，我看一下。", telegram.messages[OPERATORS][-1]["message"])  # a reply to the last part
        _, answer = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark)
        assert "收到，我看一下。" in answer["text"]  # the operator's answer reaches the customer


async def test_photos_and_files_cross_a_handoff_both_ways_and_a_forum_topic_is_no_stray_reply(
        telegram, redis_url, llmcore_url, prefix, redis, seeded):
    """A customer's photo of the broken box is what the operator needs: it was answered "I only read text" and never
    reached them; an operator's photo of a return label reached no one, and the operator was not told."""
    photo = [{"file_id": "PHOTO1", "file_unique_id": "U1", "width": 640, "height": 480}]
    async with running_bot(operator_settings(telegram, redis_url, llmcore_url, prefix), telegram):
        mark = len(telegram.calls)
        await telegram.push(message_update(photo=photo))  # no handoff, no caption: the bot reads text only
        _, note = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark)
        assert note["text"] == texts("zh").text_only
        await ask(telegram, "/human")
        mark = len(telegram.calls)
        await telegram.push(message_update(photo=photo, caption="这是破损的箱子，订单号 8812"))
        _, copied = await telegram.wait_for(lambda m, p: m == "copyMessage" and p["chat_id"] == OPERATORS, since=mark)
        header = [p["text"] for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == OPERATORS]
        assert header == [f"💬 Test (@tester, id {USER_ID}) — chat {USER_ID}:\n[photo] 这是破损的箱子，订单号 8812"]
        assert copied["from_chat_id"] == USER_ID
        assert not [p for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == USER_ID]  # the bot kept quiet
        the_copy = (await copies(telegram, OPERATORS))[-1]
        for _ in range(100):  # linked to the chat once Telegram has answered the copy
            if await redis.get(f"{prefix}handoff:msg:{the_copy['message_id']}"):
                break
            await asyncio.sleep(0.02)
        assert the_copy["photo"] == photo and the_copy["caption"] == "这是破损的箱子，订单号 8812"

        mark = len(telegram.calls)  # the operator answers the copy with a photo of their own
        label = message_update(chat_id=OPERATORS, user_id=9001, chat_type="supergroup", photo=photo, caption="退货标签",
                               reply_to_message=the_copy)
        await telegram.push(label)
        _, to_customer = await telegram.wait_for(lambda m, p: m == "copyMessage" and p["chat_id"] == USER_ID, since=mark)
        assert to_customer["from_chat_id"] == OPERATORS and to_customer["message_id"] == label["message"]["message_id"]
        assert (await copies(telegram, USER_ID))[-1]["caption"] == "退货标签"

        topic = {"message_id": 9999, "date": int(time.time()), "chat": {"id": OPERATORS, "type": "supergroup", "title": "ops"},
                 "forum_topic_created": {"name": "今天", "icon_color": 7322096}}
        mark = len(telegram.calls)
        await telegram.push(message_update(chat_id=OPERATORS, user_id=9001, chat_type="supergroup", text="大家早",
                                           message_thread_id=9999, is_topic_message=True, reply_to_message=topic))
        await operator_says(telegram, "给谁的？", {**topic, "forum_topic_created": None, "text": "x"})  # a real stray reply
        _, said = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        sent = [p["text"] for m, p in telegram.calls[mark:] if m == "sendMessage" and p["chat_id"] == OPERATORS]
        assert len(sent) == 1 and "not a handoff message" in said["text"]  # the stray reply, not the topic's chatter


async def copies(telegram, chat_id: int) -> list[dict]:
    """The messages copied into a chat, once the server has stored the last one it was asked for (it records the call
    first)."""
    for _ in range(100):
        stored = [r["message"] for r in telegram.messages.get(chat_id, []) if r["method"] == "copyMessage"]
        if len(stored) == len([1 for m, p in telegram.calls if m == "copyMessage" and p["chat_id"] == chat_id]):
            return stored
        await asyncio.sleep(0.02)
    raise AssertionError("a copy was never stored")


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


class Clock:
    """The time the bot reads (Services.clock): moved by the test, never slept for."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_two_operators_racing_for_a_chat_exactly_one_gets_it(redis, prefix):
    handoffs = Handoffs(redis, prefix, idle_s=60)
    assert await handoffs.claim(5, 9001, "Ann") is None  # nothing open
    await handoffs.open(5, 5, "q")
    claims = await asyncio.gather(*(handoffs.claim(5, operator, f"op{operator}") for operator in range(9001, 9011)))
    winners = [c for c in claims if c.first]
    assert len(winners) == 1 and {c.operator_id for c in claims} == {winners[0].operator_id}
    again = await handoffs.claim(5, winners[0].operator_id, "whoever")
    assert not again.first and again.name == winners[0].name  # theirs already; the name stays
    record = await handoffs.close(5, "done")
    assert (await redis.hgetall(f"{prefix}handoff:record:{record}"))["operator"] == winners[0].name


async def test_a_held_handoff_waits_out_of_the_idle_sweep_and_is_released_once(redis, prefix):
    clock = Clock(1_000_000.0)
    handoffs = Handoffs(redis, prefix, idle_s=60, clock=clock)
    assert await handoffs.open(6, 6, "q", held=True, who="Bo") and await handoffs.held() == [6]
    await handoffs.leave_note(6, "我的发票开错了")
    await handoffs.touch(6, question="我的发票开错了")
    clock.now += 12 * 3600
    assert await handoffs.idle() == [] and await handoffs.position(6) == 1  # waiting all night, not idle
    assert [await handoffs.release(6), await handoffs.release(6)] == [True, False]
    assert await handoffs.held() == [] and "held" not in await handoffs.get(6) and await handoffs.notes(6) == ["我的发票开错了"]
    clock.now += 61
    assert await handoffs.idle() == [6]  # released: the idle sweep counts from then
    await handoffs.close(6, "idle")
    assert await handoffs.notes(6) == [] and await handoffs.get(6) is None


async def test_a_comment_counts_once_from_the_customer_within_the_window(redis, prefix):
    clock = Clock(1_000_000.0)
    handoffs = Handoffs(redis, prefix, idle_s=60, clock=clock)
    records = []
    for chat in (7, 8):
        await handoffs.open(chat, chat, "q")
        records.append(await handoffs.close(chat, "done"))
    assert not await handoffs.comment(7, 7, "before any rating")
    assert await handoffs.rate(records[0], 7, "2") and await handoffs.rate(records[1], 8, "5")
    assert not await handoffs.comment(7, 8, "not my chat")  # someone else: no comment, the window stays
    assert await handoffs.comment(7, 7, "等了太久，我的电话13812345678") and not await handoffs.comment(7, 7, "a second one")
    assert (await redis.hgetall(f"{prefix}handoff:record:{records[0]}"))["comment"] == "等了太久，我的电话[PHONE]"
    clock.now += 5 * 60 + 1
    assert not await handoffs.comment(8, 8, "too late")  # past the window: a question for the bot
    assert "comment" not in await redis.hgetall(f"{prefix}handoff:record:{records[1]}")


def to(chat_id: int):
    return lambda m, p: m == "sendMessage" and p["chat_id"] == chat_id


def with_buttons(chat_id: int):
    return lambda m, p: to(chat_id)(m, p) and bool(buttons(p))


def run_job(application, name: str):
    """Run one of the bot's JobQueue jobs now (what its schedule would do a minute later)."""
    return application.job_queue.get_jobs_by_name(name)[0].run(application)


async def test_operators_see_a_summary_the_language_and_how_long_the_customer_waited(
        telegram, redis_url, llmcore_url, prefix, redis, seeded):
    from bot.app import build_application

    settings = operator_settings(telegram, redis_url, llmcore_url, prefix, min_confidence=0.0)  # every model answer is unsure
    application = build_application(settings)
    application.bot_data.clock = lambda: time.time() + 125  # the request comes 2 min after the question
    async with running_bot(settings, telegram, application):
        assert (await ask(telegram, "我的包裹三天没动了"))["text"].startswith("抱歉")
        mark = len(telegram.calls)
        await ask(telegram, "我要转人工")
        _, request = await telegram.wait_for(to(OPERATORS), since=mark)
        text = request["text"]
        assert f"id {USER_ID}" in text and "Language: Chinese. Waiting: 2 min" in text
        assert "Summary: asked “我的包裹三天没动了”; the bot gave up: model v0001, confidence -" in text
        assert "the FAQ has nothing like it" in text or "the FAQ's best match scored 0." in text
        assert f"it answers from {settings.faq_best:.2f} and suggests from {settings.faq_suggest:.2f}" in text
        assert "Then they asked for a person." in text
        assert text.endswith(f"👤 我的包裹三天没动了\n🤖 {texts('zh').fallback}\n👤 我要转人工")

        mark = len(telegram.calls)
        reply = await ask(telegram, "Can I talk to a human agent?", chat_id=USER_ID + 1, user_id=USER_ID + 1, language_code="en")
        _, request = await telegram.wait_for(to(OPERATORS), since=mark)
        assert "Language: English" in request["text"] and "before asking the bot anything" in request["text"]
        assert reply["text"].endswith("You are number 2 in the queue; a colleague will answer shortly.")


async def test_the_first_of_two_operators_to_answer_has_the_chat(telegram, redis_url, prefix, redis, seeded):
    ann, bo = 9001, 9002
    async with running_bot(operator_settings(telegram, redis_url, "http://127.0.0.1:9", prefix), telegram):
        alice, bob = USER_ID, USER_ID + 1
        await ask(telegram, "/human", chat_id=alice, user_id=alice)
        alice_request = telegram.messages[OPERATORS][-1]["message"]
        await ask(telegram, "/human", chat_id=bob, user_id=bob)
        bob_request = telegram.messages[OPERATORS][-1]["message"]

        mark = len(telegram.calls)
        await operator_says(telegram, "您好，我是安。", alice_request, operator_id=ann)
        _, to_alice = await telegram.wait_for(to(alice), since=mark)
        _, taken = await telegram.wait_for(lambda m, p: to(OPERATORS)(m, p) and "✋" in p["text"], since=mark)
        assert to_alice["text"] == "👩‍💼 人工客服：您好，我是安。" and taken["text"].startswith(f"✋ Test has chat {alice}")

        mark = len(telegram.calls)
        await operator_says(telegram, "我来吧。", alice_request, operator_id=bo)  # too late: Ann has it
        _, refused = await telegram.wait_for(to(OPERATORS), since=mark)
        assert refused["text"] == f"Test has chat {alice} (they took it first); your message was not sent."
        after = len(telegram.calls)
        await telegram.push(text_update("/claim", chat_id=OPERATORS, user_id=bo, chat_type="supergroup", reply_to=alice_request))
        _, refused = await telegram.wait_for(to(OPERATORS), since=after)
        assert refused["text"] == f"Test has chat {alice} (they took it first); your message was not sent."
        assert not [p for m, p in telegram.calls[mark:] if to(alice)(m, p)]

        mark = len(telegram.calls)
        await telegram.push(text_update("/claim", chat_id=OPERATORS, user_id=bo, chat_type="supergroup", reply_to=bob_request))
        _, mine = await telegram.wait_for(to(OPERATORS), since=mark)
        assert mine["text"] == f"✋ Test has chat {bob}: only they answer it now."
        await operator_says(telegram, "抢一下", bob_request, operator_id=ann)
        _, refused = await telegram.wait_for(lambda m, p: to(OPERATORS)(m, p) and "took it first" in p["text"], since=mark)
        await operator_says(telegram, "您好，我是博。", bob_request, operator_id=bo)
        _, to_bob = await telegram.wait_for(to(bob), since=mark)
        assert to_bob["text"] == "👩‍💼 人工客服：您好，我是博。"
        assert [p["text"] for m, p in telegram.calls[mark:] if to(bob)(m, p)] == [to_bob["text"]]

        mark = len(telegram.calls)
        await telegram.push(text_update("还在吗？", chat_id=alice, user_id=alice))
        _, relayed = await telegram.wait_for(to(OPERATORS), since=mark)
        assert relayed["text"].startswith(f"💬 Test (@tester, id {alice}) — chat {alice} (Test has it):")


async def test_outside_business_hours_the_customer_may_leave_a_message_delivered_when_hours_start(
        telegram, redis_url, prefix, redis, seeded):
    from bot.app import build_application
    from bot.operators import HOURS_JOB, IDLE_JOB

    shanghai = ZoneInfo("Asia/Shanghai")
    clock = Clock(datetime(2026, 12, 1, 20, 0, tzinfo=shanghai).timestamp())  # a Tuesday evening
    settings = operator_settings(telegram, redis_url, "http://127.0.0.1:9", prefix, handoff_hours="Mon-Fri 09:00-18:00 Asia/Shanghai")
    application = build_application(settings)
    application.bot_data.clock = clock
    async with running_bot(settings, telegram, application):
        alice, bob = USER_ID, USER_ID + 1
        mark = len(telegram.calls)
        told = (await ask(telegram, "/human", chat_id=alice, user_id=alice))["text"]
        assert told.startswith("现在是人工客服的非工作时间，客服人员将于 12月02日 09:00（Asia/Shanghai） 上线")
        left = await ask(telegram, "我的发票抬头开错了，能重开吗？", chat_id=alice, user_id=alice)
        assert left["text"] == "已记下您的留言，客服人员 12月02日 09:00（Asia/Shanghai） 上线后会看到。"
        assert (await ask(telegram, "/human", chat_id=alice, user_id=alice))["text"] == told  # asked again: the same
        reply = await ask(telegram, "/human", chat_id=bob, user_id=bob, language_code="en")
        assert "someone will answer you here from Wed 02 Dec 09:00 (Asia/Shanghai)" in reply["text"]
        await run_job(application, HOURS_JOB)  # still closed: nothing moves
        clock.now += 12 * 3600 + 59 * 60  # 08:59 the next morning
        await run_job(application, HOURS_JOB)
        await run_job(application, IDLE_JOB)  # a night's silence does not close a held handoff
        assert not [p for m, p in telegram.calls[mark:] if to(OPERATORS)(m, p)]
        assert await Handoffs(redis, prefix, 60).held() == [alice, bob]

        clock.now += 60  # 09:00: the hours start
        mark = len(telegram.calls)
        await run_job(application, HOURS_JOB)
        _, to_alice = await telegram.wait_for(to(alice), since=mark)
        _, to_bob = await telegram.wait_for(to(bob), since=mark)
        assert to_alice["text"] == "人工客服已上线，您的问题和留言已转给他们，请稍候。\n您目前排在第 1 位，人工同事会尽快回复您。"
        assert to_bob["text"].endswith("You are number 2 in the queue; a colleague will answer shortly.")
        requests = [p["text"] for m, p in telegram.calls[mark:] if to(OPERATORS)(m, p)]
        assert len(requests) == 2 and f"chat {alice}. Language: Chinese. Waiting: 13 h 0 min." in requests[0]
        assert requests[0].endswith("👤 我的发票抬头开错了，能重开吗？") and f"chat {bob}. Language: English" in requests[1]
        await run_job(application, HOURS_JOB)  # delivered once
        assert len([p for m, p in telegram.calls[mark:] if to(OPERATORS)(m, p)]) == 2

        mark = len(telegram.calls)
        alice_request = next(r["message"] for r in telegram.messages[OPERATORS] if f"chat {alice}." in r["message"]["text"])
        await operator_says(telegram, "可以重开，请提供正确抬头。", alice_request)
        _, answer = await telegram.wait_for(to(alice), since=mark)
        assert answer["text"] == "👩‍💼 人工客服：可以重开，请提供正确抬头。"


async def test_a_comment_after_the_rating_and_the_ratings_in_the_export(telegram, redis_url, prefix, redis, seeded):
    import json

    from bot.app import build_application
    from bot.handoff import COMMENT_WINDOW_S

    admin = 4242
    clock = Clock(time.time())
    settings = operator_settings(telegram, redis_url, "http://127.0.0.1:9", prefix, admin_ids=frozenset({admin}))
    application = build_application(settings)
    application.bot_data.clock = clock
    async with running_bot(settings, telegram, application):
        alice, bob, carol = USER_ID, USER_ID + 1, USER_ID + 2
        records = {}
        for customer in (alice, bob, carol):
            await ask(telegram, "/human", chat_id=customer, user_id=customer)
            request = telegram.messages[OPERATORS][-1]["message"]
            mark = len(telegram.calls)
            await telegram.push(text_update("/done", chat_id=OPERATORS, user_id=9001, chat_type="supergroup", reply_to=request))
            _, prompt = await telegram.wait_for(with_buttons(customer), since=mark)
            records[customer] = buttons(prompt)["5"].split(":")[1]
            mark = len(telegram.calls)
            await telegram.push(callback_update(buttons(prompt)["4"], user_id=customer, message=telegram.messages[customer][-1]))
            _, asked = await telegram.wait_for(with_buttons(customer), since=mark)
            assert asked["text"].startswith("如果愿意，可以直接发一条消息告诉我们原因") and list(buttons(asked)) == ["跳过"]

        assert (await ask(telegram, "回复很快，谢谢小王", chat_id=alice, user_id=alice))["text"] == "谢谢您的留言，我们会认真看。"
        assert (await ask(telegram, IN_FAQ[0][0], chat_id=alice, user_id=alice))["text"] == IN_FAQ[0][1]  # once: a question again
        mark = len(telegram.calls)
        await telegram.push(callback_update("csat_skip", user_id=bob, message=telegram.messages[bob][-1]))
        await telegram.wait_for("answerCallbackQuery", since=mark)
        assert (await ask(telegram, IN_FAQ[0][0], chat_id=bob, user_id=bob))["text"] == IN_FAQ[0][1]  # skipped
        clock.now += COMMENT_WINDOW_S + 1
        assert (await ask(telegram, IN_FAQ[1][0], chat_id=carol, user_id=carol))["text"] == IN_FAQ[1][1]  # too late for one
        comments = {c: (await redis.hgetall(f"{prefix}handoff:record:{r}")).get("comment") for c, r in records.items()}
        assert comments == {alice: "回复很快，谢谢小王", bob: None, carol: None}

        mark = len(telegram.calls)
        await telegram.push(text_update("/export", chat_id=admin, user_id=admin))
        await telegram.wait_for(lambda m, p: m == "sendDocument" and p["caption"] == "3 handoffs, 3 rated", since=mark)
        exported = next(f["content"] for f in telegram.files if f["filename"] == "kefu-handoffs.jsonl")
        rows = [json.loads(line) for line in exported.decode().splitlines()]
        assert sorted((r["user_id"], r["rating"], r.get("comment")) for r in rows) == [
            (str(alice), "4", "回复很快，谢谢小王"), (str(bob), "4", None), (str(carol), "4", None)]


async def test_an_operators_answer_the_faq_lacks_is_approved_and_then_the_bot_answers_it(
        telegram, redis_url, prefix, redis, seeded):
    admin, question, answer = 4242, "你们周末有人上班吗？", "周末也有客服值班，时间是 10:00-16:00。"
    settings = operator_settings(telegram, redis_url, "http://127.0.0.1:9", prefix, llmcore_timeout_s=2, admin_ids=frozenset({admin}))
    async with running_bot(settings, telegram):
        assert (await ask(telegram, question))["text"].startswith("抱歉")  # the FAQ lacks it, the model is away
        await ask(telegram, "/human")
        request = telegram.messages[OPERATORS][-1]["message"]
        mark = len(telegram.calls)
        await operator_says(telegram, answer, request)
        await telegram.wait_for(to(USER_ID), since=mark)
        # the operators' chat is handled in order: once /claim is answered, the reply before it is logged and proposed
        await telegram.push(text_update("/claim", chat_id=OPERATORS, user_id=9001, chat_type="supergroup", reply_to=request))
        await telegram.wait_for(lambda m, p: to(OPERATORS)(m, p) and "yours already" in p["text"], since=mark)

        listed = await ask(telegram, "/faq_pending", chat_id=admin, user_id=admin)
        assert listed["text"] == f"New entry (an operator's answer): “{question}” → {answer}"
        mark = len(telegram.calls)
        await telegram.push(callback_update(buttons(listed)["✅ Add"], user_id=admin, chat_id=admin, message=telegram.messages[admin][-1]))
        _, added = await telegram.wait_for(lambda m, p: to(admin)(m, p) and "new FAQ entry" in p["text"], since=mark)
        assert added["text"].startswith(f"“{question}”: new FAQ entry #")

        await ask(telegram, "/end")
        reply = await ask(telegram, question, chat_id=USER_ID + 1, user_id=USER_ID + 1)
        assert reply["text"] == answer and buttons(reply).get("👍", "").startswith("fb:")  # from the FAQ, at once
        entry = next(e for _, e in await redis.xrange(f"{prefix}log") if e["chat_id"] == str(USER_ID + 1))
        assert entry["source"] == "faq"
