"""Training log: scrubbed before written, ratings only by the asker, export in the training format, retention, forget."""
import asyncio
import json

from bot.exchanges import Exchange, ExchangeLog
from llmcore.chats import parse_conversation

from .conftest import keys_with


def exchange(user_id=1, question="怎么退货？", answer="七天内可以退货。", source="faq", score=0.9, version=None):
    return Exchange(chat_id=user_id, user_id=user_id, question=question, answer=answer, source=source, score=score,
                    version=version, latency_ms=12)


async def test_personal_data_never_reaches_redis(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(exchange(question="我的手机13812345678，邮箱 li.lei@example.com", answer="好的"))
    assert await keys_with(redis, prefix, "13812345678") == []
    assert await keys_with(redis, prefix, "li.lei@example.com") == []
    [(_, entry)] = [e async for e in log.entries()]
    assert "[PHONE]" in entry["question"] and "[EMAIL]" in entry["question"]


async def test_the_shops_own_answers_are_logged_as_they_are_and_others_scrubbed(redis, prefix):
    """A FAQ answer with the shop's e-mail became "客服邮箱为[EMAIL]" in training data, beside the real one: the model
    learned both, and its answers then failed the FAQ check. An operator's or the model's answer is still scrubbed."""
    log = ExchangeLog(redis, prefix, retention_days=30)
    shop = "客服邮箱为service@qinghe.example，电话 13800001111。"
    for source in ("faq", "smalltalk", "operator", "model", "fallback"):
        await log.append(exchange(question="怎么联系你们？ 我的手机13812345678", answer=shop, source=source))
    logged = {e["source"]: e async for _, e in log.entries()}
    assert {source: e["answer"] == shop for source, e in logged.items()} == \
        {"faq": True, "smalltalk": True, "operator": False, "model": False, "fallback": False}
    assert all(e["question"] == "怎么联系你们？ 我的手机[PHONE]" for e in logged.values())


async def test_rating_attaches_only_for_the_asker_and_a_real_entry(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    entry_id = await log.append(exchange(user_id=5))
    assert not await log.rate(entry_id, 6, "up")  # someone else's answer
    assert not await log.rate("99999999999999-0", 5, "up")  # no such entry
    assert not await log.rate("not-an-id", 5, "up")
    # a forged button's id past 64 bits: Redis would refuse it with an error (read as "Redis is down"), so it is no entry
    assert not await log.rate("99999999999999999999-1", 5, "up") and await log.get("1-99999999999999999999") is None
    assert not await log.rate(entry_id, 5, "meh")
    assert await log.rate(entry_id, 5, "down") == "new"
    assert await log.rate(entry_id, 5, "down") == "same"  # a second tap: the handler counts it once, offers no second handoff
    assert [await log.rate(entry_id, 5, r) for r in ("up", "down")] == ["changed", "changed"]
    [(_, entry)] = [e async for e in log.entries()]
    assert entry["rating"] == "down"


async def test_export_is_training_data_without_thumbs_down_and_fallbacks(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    good = await log.append(exchange(question="运费多少？", answer="满69包邮。", source="model", score=-0.4, version="v0002"))
    bad = await log.append(exchange(question="坏问题", answer="坏回答", source="model", score=-0.5))
    await log.append(exchange(question="看不懂", answer="抱歉", source="fallback", score=None))
    await log.rate(bad, 1, "down")
    await log.rate(good, 1, "up")
    records = [c async for c in log.conversations()]
    assert [r["messages"][0]["content"] for r in records] == ["运费多少？"]
    assert records[0]["meta"] == {"id": good, "source": "model", "rating": "up", "version": "v0002", "score": -0.4}
    parse_conversation(json.dumps(records[0], ensure_ascii=False))  # llmcore reads it as training data
    assert len([c async for c in log.conversations(include_down=True, include_fallback=True)]) == 3


async def test_retention_drops_old_entries_and_what_hangs_on_them(redis, prefix, monkeypatch):
    """The ratings and the console's review marks of trimmed entries go too, and a customer's index of their entries
    does not keep trimmed ids (they grew by one per rating, mark or question, forever)."""
    from bot import exchanges

    monkeypatch.setattr(exchanges, "USER_INDEX_PRUNE_AT", 2)
    log = ExchangeLog(redis, prefix, retention_days=1)
    await redis.xadd(log.stream, {"question": "old", "answer": "x", "source": "faq"}, id="1000-0")  # 1970: far past retention
    await redis.hset(log.ratings, mapping={"1000-0": "down", "1001-0": "up"})
    await redis.hset(f"{prefix}console:reviewed", "1000-0", "{}")
    await redis.sadd(f"{prefix}user:5:log", "1000-0", "1001-0")
    kept = await log.append(exchange(user_id=5))
    await log.rate(kept, 5, "up")
    assert [e["question"] async for _, e in log.entries()] == ["怎么退货？"]
    assert await redis.hgetall(log.ratings) == {kept: "up"} and not await redis.exists(f"{prefix}console:reviewed")
    assert await redis.smembers(f"{prefix}user:5:log") == {kept}


async def test_forget_user_erases_entries_and_ratings(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    mine = await log.append(exchange(user_id=8, question="我的订单在哪"))
    await log.append(exchange(user_id=9, question="别人的问题"))
    await log.rate(mine, 8, "up")
    await log.link_message(8, 1234, mine)  # /why under the answer in their private chat
    assert (await log.entry_for_message(8, 1234))[0] == mine
    real_scan, redis.scan_iter = redis.scan_iter, None  # named keys only: a scan per /forget walks every key
    try:
        assert await log.forget_user(8) == 1
    finally:
        redis.scan_iter = real_scan
    assert [e["question"] async for _, e in log.entries()] == ["别人的问题"]
    assert await keys_with(redis, prefix, mine) == [] and await keys_with(redis, prefix, "我的订单在哪") == []
    assert await log.entry_for_message(8, 1234) is None


async def test_training_records_carry_their_chats_earlier_turns_as_context_only(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(exchange(user_id=1, question="我的电话13812345678，想问运费", answer="抱歉，我还不能回答。", source="fallback"))
    await log.append(exchange(user_id=2, question="别的聊天", answer="别的回答。"))
    await log.append(exchange(user_id=1, question="满多少包邮？", answer="满69元包邮。"))
    await log.append(exchange(user_id=1, question="偏远地区呢？", answer="偏远地区另收10元。", source="model"))
    records = [r async for r in log.conversations(context_turns=2)]
    assert [r["messages"][-2]["content"] for r in records] == ["别的聊天", "满多少包邮？", "偏远地区呢？"]  # the fallback itself is out
    by_question = {r["messages"][-2]["content"]: r["messages"] for r in records}
    assert by_question["别的聊天"][:-2] == []  # another chat's turns never leak in
    context = by_question["满多少包邮？"][:-2]
    assert [m["role"] for m in context] == ["user", "assistant"] and context[1] == {"role": "assistant", "content": "抱歉，我还不能回答。",
                                                                                      "weight": 0}
    assert "13812345678" not in context[0]["content"] and "[PHONE]" in context[0]["content"]  # scrubbed like every entry
    assert [m["content"] for m in by_question["偏远地区呢？"][:-2]] == ["满多少包邮？", "满69元包邮。"]  # at most 2 earlier messages
    for record in records:  # llmcore reads them, and learns only the last answer
        conversation = parse_conversation(json.dumps(record, ensure_ascii=False))
        weights = [m.get("weight", 1) for m in conversation.messages if m["role"] == "assistant"]
        assert weights == [0] * (len(weights) - 1) + [1]
    assert [len(r["messages"]) for r in [r async for r in log.conversations()]] == [2, 2, 2]  # no context unless asked for


async def test_in_a_group_a_training_record_carries_its_customers_own_turns(redis, prefix):
    """As the bot shows the model the asker's own earlier turns in a group, so the training records."""
    log = ExchangeLog(redis, prefix, retention_days=30)
    group = -100
    asked = ((1, "满多少包邮？", "满69元包邮。"), (2, "发票怎么开？", "在订单页申请。"), (1, "偏远地区呢？", "另收10元。"))
    for user_id, question, answer in asked:
        await log.append(Exchange(group, user_id, question, answer, "faq", 0.9, None, 12))
    records = {r["messages"][-2]["content"]: r["messages"] async for r in log.conversations(context_turns=2)}
    assert [m["content"] for m in records["偏远地区呢？"][:-2]] == ["满多少包邮？", "满69元包邮。"]
    assert records["发票怎么开？"][:-2] == []


async def test_an_operators_answer_takes_the_place_of_the_bots_answer_to_that_question(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(exchange(user_id=1, question="运费多少？", answer="满69元包邮。"))
    await log.append(exchange(user_id=1, question="可以加盟吗？", answer="抱歉，我还不能回答。", source="fallback"))
    await log.append(exchange(user_id=1, question="可以加盟吗？", answer="暂不开放加盟。", source="operator"))
    await log.append(exchange(user_id=1, question="那代理呢？", answer="也不开放。", source="operator"))
    records = {r["messages"][-1]["content"]: r["messages"] async for r in log.conversations(context_turns=4)}
    assert [m["content"] for m in records["暂不开放加盟。"]] == ["运费多少？", "满69元包邮。", "可以加盟吗？", "暂不开放加盟。"]
    assert [m["content"] for m in records["也不开放。"][:-2]] == ["运费多少？", "满69元包邮。", "可以加盟吗？", "暂不开放加盟。"]


async def test_one_customer_cannot_become_most_of_the_training_set(redis, prefix, monkeypatch):
    """A flood from one account (each message a new question, each answered) is capped at its latest PER_CUSTOMER;
    other customers' exchanges and the FAQ are all kept."""
    from bot import trainingset
    from bot.faq import FaqStore

    monkeypatch.setattr(trainingset, "PER_CUSTOMER", 5)
    log = ExchangeLog(redis, prefix, retention_days=30)
    for i in range(30):
        await log.append(exchange(user_id=66, question=f"刷屏问题{i}", answer=f"回答{i}"))
    for user in (1, 2):
        await log.append(exchange(user_id=user, question=f"客户{user}的问题", answer="好的。"))
    records = await trainingset.build_training_set(log, FaqStore(redis, prefix))
    questions = [r["messages"][-2]["content"] for r in records]
    assert [q for q in questions if q.startswith("刷屏")] == [f"刷屏问题{i}" for i in range(25, 30)]  # the latest five
    assert "客户1的问题" in questions and "客户2的问题" in questions
    assert not [r for r in records if "user_id" in r["meta"] or "66" in json.dumps(r["meta"])]  # counted, never sent


async def test_a_training_set_too_large_for_one_request_keeps_the_newest_exchanges_and_the_whole_faq(redis, prefix, monkeypatch):
    """Past the 64 MiB llmcore takes in one request (~57,000 logged exchanges) every /retrain was refused until old
    ones expired; the set now drops the oldest logged exchanges until it fits."""
    from bot import trainingset
    from bot.faq import FaqStore

    faq = FaqStore(redis, prefix)
    await faq.add("怎么退货？", "七天内可以在订单页申请退货。", ["能退货吗"])
    log = ExchangeLog(redis, prefix, retention_days=30)
    for i in range(40):
        await log.append(exchange(user_id=i, question=f"第{i}个问题", answer=f"第{i}个回答"))
    whole = await trainingset.build_training_set(log, faq)
    budget = sum(len(json.dumps(r)) + 2 for r in whole[-12:])  # room for 10 exchanges and the FAQ's two questions
    monkeypatch.setattr(trainingset, "MAX_BYTES", budget)
    kept = await trainingset.build_training_set(log, faq)
    assert kept == whole[-12:] and len(json.dumps(kept)) <= budget
    assert [r["messages"][-2]["content"] for r in kept] == [f"第{i}个问题" for i in range(30, 40)] + ["怎么退货？", "能退货吗"]


async def test_forget_while_an_exchange_is_being_logged_leaves_nothing_of_the_user(redis, prefix):
    """An answer logged at the moment the customer confirms /forget: the entry and its place in the user's index are
    written as one, so /forget either finds it or runs before it exists (a stream entry outside the index stayed)."""
    log = ExchangeLog(redis, prefix, retention_days=30)

    async def forget_after(turns: int) -> None:  # /forget lands at every point of the append in turn
        for _ in range(turns):
            await asyncio.sleep(0)
        await log.forget_user(8)

    for round_ in range(30):
        await asyncio.gather(log.append(exchange(user_id=8, question=f"我的订单{round_}")), forget_after(round_))
        await log.forget_user(8)  # whatever was logged after the first /forget goes with the second
        assert [e async for _, e in log.entries() if e["user_id"] == "8"] == []


async def test_forget_erases_a_long_customer_history_whole(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    ids = []  # deleted in chunks of 1,000
    for start in range(0, 1100, 50):
        ids += await asyncio.gather(*(log.append(exchange(user_id=8, question=f"问题{i}")) for i in range(start, start + 50)))
    await log.rate(ids[-1], 8, "down")
    await log.append(exchange(user_id=9, question="别人的问题"))
    assert await log.forget_user(8) == 1100
    assert [e["question"] async for _, e in log.entries()] == ["别人的问题"]
    assert await redis.hget(log.ratings, ids[-1]) is None



async def test_a_logged_copy_of_a_faq_pair_does_not_take_its_place_in_a_cut_training_set(redis, prefix, monkeypatch):
    """A customer asked a FAQ question word for word and got its answer: that logged exchange took the FAQ pair's place
    in the set, and went with the oldest logged exchanges when the set was cut to fit one request."""
    from bot import trainingset
    from bot.faq import FaqStore

    faq = FaqStore(redis, prefix)
    await faq.add("怎么退货？", "七天内可以在订单页申请退货。", ["能退货吗"])
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(exchange(user_id=1, question="怎么退货？", answer="七天内可以在订单页申请退货。", source="faq"))
    for i in range(10):
        await log.append(exchange(user_id=i + 2, question=f"第{i}个问题", answer=f"第{i}个回答"))
    whole = await trainingset.build_training_set(log, faq)
    assert [r["messages"][-2]["content"] for r in whole][-2:] == ["怎么退货？", "能退货吗"] and len(whole) == 12
    monkeypatch.setattr(trainingset, "MAX_BYTES", sum(len(json.dumps(r)) + 2 for r in whole[-4:]))
    kept = await trainingset.build_training_set(log, faq)
    assert [r["messages"][-2]["content"] for r in kept] == ["第8个问题", "第9个问题", "怎么退货？", "能退货吗"]


async def test_an_operators_answer_that_is_a_faq_pair_stays_pinned_and_weighted(redis, prefix):
    """The FAQ's own records go last so that the bot's logged copy of a pair does not stand in for it; an operator who
    answered with the FAQ's very words still counts as an operator: pinned, weighted, with the chat's context."""
    from bot import trainingset
    from bot.faq import FaqStore

    faq = FaqStore(redis, prefix)
    await faq.add("怎么退货？", "七天内可以在订单页申请退货。")
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(exchange(user_id=1, question="你好", answer="您好！", source="model"))
    await log.append(exchange(user_id=1, question="怎么退货？", answer="七天内可以在订单页申请退货。", source="operator"))
    records = await trainingset.build_training_set(log, faq, context_turns=2)
    refund = [r for r in records if r["messages"][-2]["content"] == "怎么退货？"]
    assert len(refund) == trainingset.OPERATOR_WEIGHT and all(r["meta"] == {"source": "operator", "pin": True} for r in refund)
    assert [m["content"] for m in refund[0]["messages"]][:2] == ["你好", "您好！"]
