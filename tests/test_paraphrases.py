"""Paraphrases learned from use: a tap on a "did you mean" button proposes the customer's wording; an admin (or
enough different customers) makes it a question of the entry; forged taps and personal data teach nothing."""
from bot import paraphrases as module
from bot.faq import FaqStore
from bot.paraphrases import Paraphrases

from .conftest import keys_with

CHAT, MESSAGE = 42, 7


async def store(redis, prefix, auto_approve: int = 0) -> tuple[FaqStore, Paraphrases, str, str]:
    faq = FaqStore(redis, prefix)
    refund = await faq.add("退款多久到账？", "原路退回，1-3个工作日到账。")
    invoice = await faq.add("怎么开发票？", "下单时选择电子发票即可。")
    return faq, Paraphrases(redis, prefix, faq, auto_approve), refund, invoice


async def test_a_tap_proposes_and_an_approved_wording_is_matched_at_once(redis, prefix):
    faq, learned, refund, invoice = await store(redis, prefix)
    assert all(m.score < 1 for m in await faq.match("钱啥时候能回到我卡上"))
    await learned.offered(CHAT, MESSAGE, "钱啥时候能回到我卡上", [refund, invoice])
    proposal = await learned.tapped(CHAT, MESSAGE, refund, user_id=1)
    assert proposal and proposal.wording == "钱啥时候能回到我卡上" and proposal.entry_id == refund
    assert [p.key for p in await learned.pending()] == [proposal.key]
    assert await learned.approve(proposal.key) == proposal
    best = (await faq.match("钱啥时候能回到我卡上", k=1))[0]
    assert best.entry.id == refund and best.score == 1.0 and "钱啥时候能回到我卡上" in best.entry.similar
    assert await learned.pending() == [] and await learned.approve(proposal.key) is None  # decided once


async def test_a_rejected_wording_changes_nothing(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix)
    await learned.offered(CHAT, MESSAGE, "钱啥时候退", [refund])
    proposal = await learned.tapped(CHAT, MESSAGE, refund, user_id=1)
    assert await learned.reject(proposal.key) == proposal
    assert (await faq.get(refund)).similar == () and await learned.pending() == []


async def test_forged_taps_personal_data_and_known_wordings_teach_nothing(redis, prefix):
    faq, learned, refund, invoice = await store(redis, prefix)
    assert await learned.tapped(CHAT, MESSAGE, refund, user_id=1) is None  # no button was offered under that message
    await learned.offered(CHAT, MESSAGE, "钱啥时候退", [invoice])
    assert await learned.tapped(CHAT, MESSAGE, refund, user_id=1) is None  # that entry was not among the buttons
    assert await learned.tapped(CHAT, MESSAGE + 1, invoice, user_id=1) is None  # nor under another message
    await learned.offered(CHAT, 8, "我手机13812345678，钱啥时候退", [refund])
    assert await learned.tapped(CHAT, 8, refund, user_id=1) is None  # personal data never becomes a FAQ question
    assert "13812345678" not in str(await redis.get(f"{prefix}offer:{CHAT}:8"))  # and is not kept
    await learned.offered(CHAT, 9, "退款多久到账", [refund])
    assert await learned.tapped(CHAT, 9, refund, user_id=1) is None  # already the entry's question
    assert await learned.pending() == []


async def test_only_the_asker_s_tap_counts_and_links_never_become_wordings(redis, prefix):
    """In a group, bystanders tapping under someone else's question once counted as that many customers (enough to
    approve a wording alone); a wording is a button label others see, so no link or @handle; a mention of the bot is
    not part of the wording."""
    faq, learned, refund, _ = await store(redis, prefix, auto_approve=2)
    await learned.offered(-100, 5, "钱啥时候退", [refund], user_id=1)
    assert [await learned.tapped(-100, 5, refund, user_id=u) for u in (2, 3)] == [None, None]
    assert await learned.pending() == [] and (await faq.get(refund)).similar == ()
    for message, text in ((6, "退款去 https://evil.example 查"), (7, "退款看 evil.com"), (8, "退款问 t.me/scam")):
        await learned.offered(-100, message, text, [refund], user_id=1)
        assert await learned.tapped(-100, message, refund, user_id=1) is None, text
    await learned.offered(-100, 9, "@shop_bot 退款啥时候到 @scammer_bot", [refund], user_id=1)
    proposal = await learned.tapped(-100, 9, refund, user_id=1)
    assert proposal is not None and proposal.wording == "退款啥时候到"  # the handles are not part of the wording


async def test_each_customer_counts_once_and_proposes_a_bounded_number_a_day(redis, prefix, monkeypatch):
    monkeypatch.setattr(module, "PROPOSALS_PER_DAY", 3)
    faq, learned, refund, _ = await store(redis, prefix)
    await learned.offered(CHAT, MESSAGE, "钱啥时候退", [refund])
    assert await learned.tapped(CHAT, MESSAGE, refund, user_id=1)
    assert await learned.tapped(CHAT, MESSAGE, refund, user_id=1) is None  # the same customer again
    for n in range(5):
        await learned.offered(CHAT, 100 + n, f"退款第{n}次问", [refund])
    made = [await learned.tapped(CHAT, 100 + n, refund, user_id=1) for n in range(5)]
    assert sum(p is not None for p in made) == 1  # 3 a day in all: 2 taps counted above
    assert len(await learned.pending()) == 2


async def test_enough_different_customers_approve_without_an_admin(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix, auto_approve=2)
    for user, message in ((1, 10), (2, 11)):
        await learned.offered(user, message, "钱啥时候退", [refund])
        await learned.tapped(user, message, refund, user_id=user)
    assert "钱啥时候退" in (await faq.get(refund)).similar and await learned.pending() == []


async def test_an_operator_answering_with_an_faq_answer_proposes_the_customers_question(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix)
    proposal = await learned.operator_answered("钱到底啥时候退回来", "原路退回，1-3个工作日到账。", user_id=5)
    assert proposal and proposal.entry_id == refund and proposal.wording == "钱到底啥时候退回来"
    assert await learned.operator_answered("我电话13812345678，钱呢", "原路退回，1-3个工作日到账。", user_id=6) is None


async def test_an_operators_answer_to_a_question_the_faq_lacks_proposes_a_new_entry(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix, auto_approve=1)  # taps vouch for wordings, never for answers
    assert (await faq.match("你们招聘吗", k=1) or [None])[0] is None  # the FAQ lacks it
    proposal = await learned.operator_answered("你们招聘吗", "请在官网的“加入我们”页面投递简历。", user_id=5)
    assert proposal and proposal.is_new_entry and proposal.entry_id == "" and proposal.answer == "请在官网的“加入我们”页面投递简历。"
    assert [p.key for p in await learned.pending()] == [proposal.key] and await faq.count() == 2
    assert await learned.operator_answered("退款多久能到账？", "一般很快。", user_id=6) is None  # the FAQ has it (near)
    assert await learned.operator_answered("你们招不招人", "打13812345678找我。", user_id=7) is None  # personal data in the answer
    approved = await learned.approve(proposal.key)
    assert approved.entry_id and approved.entry_id not in (refund, "")
    best = (await faq.match("你们招聘吗", k=1))[0]
    assert best.entry.id == approved.entry_id and best.entry.answer == proposal.answer and best.score == 1.0
    assert await learned.pending() == [] and await learned.approve(proposal.key) is None


async def test_a_customers_forget_takes_their_wordings_out_of_the_proposals(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix)
    await learned.offered(CHAT, MESSAGE, "钱啥时候退", [refund])
    await learned.offered(CHAT + 1, MESSAGE, "钱啥时候退", [refund])
    shared = await learned.tapped(CHAT, MESSAGE, refund, user_id=1)
    assert await learned.tapped(CHAT + 1, MESSAGE, refund, user_id=2)  # the same wording, a second customer
    own = await learned.operator_answered("发票抬头能改吗？", "开票后30天内可在订单页修改抬头。", user_id=1)
    assert own and own.is_new_entry
    await learned.forget_user(1)
    assert [(p.key, p.users) for p in await learned.pending()] == [(shared.key, 1)]  # the other customer's vote stays
    assert "发票抬头" not in str(await redis.hgetall(f"{prefix}faq:pending"))


async def test_a_customers_forget_takes_the_questions_under_their_buttons_and_their_count(redis, prefix):
    faq, learned, refund, _ = await store(redis, prefix)
    user, other, group = 1001, 2002, -500
    await learned.offered(user, 5, "我的快递怎么还没到", [refund], user_id=user)  # their private chat
    await learned.offered(group, 6, "钱啥时候退给我", [refund], user_id=user)  # theirs in a group
    await learned.offered(group, 7, "发票怎么开呀", [refund], user_id=other)
    assert await learned.tapped(user, 5, refund, user_id=user)  # counts a proposal for them today
    assert await keys_with(redis, prefix, f"faq:proposed:{user}:")
    real_scan = redis.scan_iter
    redis.scan_iter = None  # named keys only: anyone could send /forget twenty times a minute, a scan walks every key
    try:
        await learned.forget_user(user)
    finally:
        redis.scan_iter = real_scan
    assert not await keys_with(redis, prefix, "我的快递怎么还没到") and not await keys_with(redis, prefix, "钱啥时候退给我")
    assert not await keys_with(redis, prefix, f"faq:proposed:{user}:")
    assert await keys_with(redis, prefix, "发票怎么开呀")  # another customer's question stays
