"""Handoffs answered from the console, as from the operators' group (bot/desk.py): the page (transcript, who has it,
the wait by an injected clock), Claim, a second operator refused with the claimer's name, no CSRF no message; and end to
end with the bot on the local Bot API server: the customer asks for a person, an operator answers from the web, the
customer gets it, it is an operator answer in the training log and a proposed FAQ entry, the group sees it came from
the console, Done sends the rating buttons and the customer's rating is stored."""
import re

import pytest

from bot.console.auth import Person
from bot.handoff import Handoffs

from .botapi import USER_ID, callback_update, text_update
from .botkit import ask, buttons, running_bot, settings_for
from .consolekit import OPERATOR, OPERATOR_ID, console_client, console_settings, login

OPERATORS = -100888
SECOND = Person(9004, "Mia", "operator", "en")
CUSTOMER = 777


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sent_to(telegram, chat_id: int, since: int) -> list[dict]:
    return [p for m, p in telegram.calls[since:] if m == "sendMessage" and p["chat_id"] == chat_id]


def section(page: str, element_id: str) -> str:
    return re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', page, re.S).group(2)


async def switch_to(client, c, person: Person) -> str:
    client.session.cookie_jar.clear()
    return await login(client, c, person)


@pytest.fixture
async def desk(telegram, redis_url, prefix):
    """The console with a Bot API client on the local server and two operators: (client, Console, clock)."""
    clock = Clock()
    settings = console_settings(redis_url, prefix, telegram_bot_token=telegram.token, telegram_api_base=telegram.base,
                                operator_chat_id=OPERATORS, operator_ids=f"{OPERATOR_ID},{SECOND.user_id}")
    async with console_client(settings, clock) as (client, c):
        yield client, c, clock


async def test_the_page_shows_the_transcript_who_has_it_and_the_wait_and_claim_takes_it_once(desk, telegram):
    client, c, clock = desk
    await c.kefu.history.append(CUSTOMER, CUSTOMER, "我的包裹丢了", "抱歉，这个问题我还不会回答。")
    assert await c.kefu.handoffs.open(CUSTOMER, CUSTOMER, "我的包裹丢了", who="Li Lei (id 777)")
    await c.kefu.handoffs.leave_note(CUSTOMER, "<script>alert(1)</script>")
    clock.now += 600
    token = await login(client, c, OPERATOR)
    page = await (await client.get(f"/handoffs/{CUSTOMER}")).text()
    assert "我的包裹丢了" in section(page, "transcript") and "抱歉，这个问题我还不会回答。" in section(page, "transcript")
    assert "&lt;script&gt;" in page and "<script>alert" not in page
    assert section(page, "waited").startswith("10 min") and "无人接手" in section(page, "claimer") and 'id="claim"' in page
    listing = await (await client.get("/handoffs")).text()
    assert f'href="/handoffs/{CUSTOMER}"' in listing and "10 min" in listing

    mark = len(telegram.calls)
    claimed = await client.post(f"/handoffs/{CUSTOMER}/claim", data={"csrf": token}, allow_redirects=False)
    assert claimed.status == 303
    assert [p["text"] for p in sent_to(telegram, OPERATORS, mark)] == [f"✋ Olga has chat {CUSTOMER}: only they answer it now."]
    clock.now += 60
    page = await (await client.get(f"/handoffs/{CUSTOMER}")).text()
    assert section(page, "claimer") == "Olga" and 'id="claim"' not in page and section(page, "waited").startswith("11 min")
    assert [(e.name, e.action) for e in await c.audit.latest()][:1] == [("Olga", "handoff.claim")]

    token = await switch_to(client, c, SECOND)
    mark = len(telegram.calls)
    for action, data in (("claim", {}), ("answer", {"answer": "I can help."})):
        refused = await client.post(f"/handoffs/{CUSTOMER}/{action}", data={"csrf": token, **data})
        assert refused.status == 409 and f"Olga has chat {CUSTOMER}" in await refused.text()
    assert telegram.calls[mark:] == []  # nothing to the customer, nothing to the group
    assert (await c.kefu.handoffs.get(CUSTOMER))["operator_name"] == "Olga"
    assert (await client.get("/handoffs/778")).status == 404


async def test_a_post_without_csrf_sends_nothing(desk, telegram):
    client, c, _ = desk
    assert await c.kefu.handoffs.open(CUSTOMER, CUSTOMER, "发票怎么开？")
    await login(client, c, OPERATOR)
    mark = len(telegram.calls)
    for action in ("answer", "claim", "done"):
        for data in ({}, {"csrf": "wrong"}):
            response = await client.post(f"/handoffs/{CUSTOMER}/{action}", data={**data, "answer": "在订单页开。"})
            assert response.status == 403, action
    assert telegram.calls[mark:] == []
    state = await c.kefu.handoffs.get(CUSTOMER)
    assert state is not None and "operator" not in state and [e async for e in c.kefu.log.entries()] == []


async def test_done_stands_and_is_audited_when_the_customer_cannot_be_told(desk, telegram):
    """Telegram refusing the customer's "the bot is back" (flood control here; a deleted chat, a timeout) after the
    handoff closed: the console answered 500, and the close went unaudited and unannounced to the group."""
    client, c, _ = desk
    assert await c.kefu.handoffs.open(CUSTOMER, CUSTOMER, "发票怎么开？")
    token = await login(client, c, OPERATOR)
    telegram.flood(1, retry_after=30)  # the first message: the one to the customer
    closed = await client.post(f"/handoffs/{CUSTOMER}/done", data={"csrf": token}, allow_redirects=False)
    assert closed.status == 303 and await c.kefu.handoffs.get(CUSTOMER) is None
    assert [e.action for e in await c.audit.latest()][:1] == ["handoff.done"]
    assert any(m == "sendMessage" and p["chat_id"] == OPERATORS and "closed chat" in p["text"] for m, p in telegram.calls)


async def test_an_operator_answers_from_the_web_as_from_the_group(telegram, redis_url, prefix, redis, seeded):
    settings = settings_for(telegram, redis_url, "http://127.0.0.1:9", prefix, "polling", llmcore_timeout_s=2, faq_encoder="none",
                            operator_chat_id=OPERATORS, operator_ids=f"{OPERATOR_ID},{SECOND.user_id}")
    async with running_bot(settings, telegram), console_client(settings) as (client, c):
        fallback = await ask(telegram, "我的包裹三天没动了", user_id=USER_ID)
        assert "人工客服" in buttons(fallback)
        mark = len(telegram.calls)
        await ask(telegram, "/human")
        _, briefing = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert "我的包裹三天没动了" in briefing["text"]

        token = await login(client, c, OPERATOR)
        page = await (await client.get("/handoffs")).text()
        assert f'href="/handoffs/{USER_ID}"' in page
        mark = len(telegram.calls)
        answered = await client.post(f"/handoffs/{USER_ID}/answer", data={"csrf": token, "answer": "包裹在中转站，明天送达。"},
                                     allow_redirects=False)
        assert answered.status == 303 and answered.headers["Location"] == f"/handoffs/{USER_ID}?done=answer"
        assert [p["text"] for p in sent_to(telegram, USER_ID, mark)] == ["👩‍💼 人工客服：包裹在中转站，明天送达。"]
        group = [p["text"] for p in sent_to(telegram, OPERATORS, mark)]
        assert group == [f"✋ Olga has chat {USER_ID}: only they answer it now.",
                         f"🖥 Olga answered chat {USER_ID} from the console:\n包裹在中转站，明天送达。"]
        logged = [e for _, e in await redis.xrange(f"{prefix}log") if e["source"] == "operator"]
        assert [(e["question"], e["answer"]) for e in logged] == [("我的包裹三天没动了", "包裹在中转站，明天送达。")]
        assert [(p.wording, p.answer) for p in await c.kefu.paraphrases.pending()] == [("我的包裹三天没动了", "包裹在中转站，明天送达。")]
        assert (await Handoffs(redis, prefix, 60).get(USER_ID))["first_reply"]

        # a second operator, from the web or from the group, is refused with the claimer's name and nothing is sent
        token = await switch_to(client, c, SECOND)
        mark = len(telegram.calls)
        refused = await client.post(f"/handoffs/{USER_ID}/answer", data={"csrf": token, "answer": "Anything else?"})
        assert refused.status == 409 and f"Olga has chat {USER_ID}" in await refused.text()
        note = telegram.messages[OPERATORS][-1]["message"]  # the console's note: a reply to it answers that chat
        await telegram.push(text_update("还有别的问题吗？", chat_id=OPERATORS, user_id=SECOND.user_id, chat_type="supergroup",
                                        reply_to=note))
        _, told = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == OPERATORS, since=mark)
        assert told["text"] == f"Olga has chat {USER_ID} (they took it first); your message was not sent."
        assert sent_to(telegram, USER_ID, mark) == []
        assert len([e for _, e in await redis.xrange(f"{prefix}log") if e["source"] == "operator"]) == 1

        token = await switch_to(client, c, OPERATOR)
        mark = len(telegram.calls)
        closed = await client.post(f"/handoffs/{USER_ID}/done", data={"csrf": token}, allow_redirects=False)
        assert closed.status == 303 and closed.headers["Location"] == "/handoffs?done=closed"
        back, rate = sent_to(telegram, USER_ID, mark)
        assert back["text"] == "人工客服会话已结束，接下来由我继续为您服务。"
        stars = buttons(rate)
        assert list(stars) == ["1", "2", "3", "4", "5"]
        assert sent_to(telegram, OPERATORS, mark)[-1]["text"].startswith(f"🖥 Olga closed chat {USER_ID} from the console")
        assert (await client.get(f"/handoffs/{USER_ID}")).status == 404

        mark = len(telegram.calls)
        await telegram.push(callback_update(stars["5"], user_id=USER_ID, message=telegram.messages[USER_ID][-1]))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == USER_ID, since=mark)  # the comment prompt
        [record] = await Handoffs(redis, prefix, 60).records(0)
        assert record["rating"] == "5" and record["how"] == "done" and record["operator"] == "Olga"
        actions = [e.action for e in await c.audit.latest()]
        assert actions.count("handoff.answer") == 1 and "handoff.done" in actions
