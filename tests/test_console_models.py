"""The console's Models page against the real llmcore admin API: versions with metrics, promote and roll back, a
retrain started from the page whose progress arrives as server-sent events, then promoted; and the admin's /console
command in Telegram (the local Bot API server), whose link logs into the console."""
import json
import re
import time

from bot.console.base import CONSOLE, COOKIE
from bot.console.people import ROLE_TTL_S
from bot.search import FaqEntry

from .botapi import USER_ID
from .botkit import ask, running_bot, settings_for
from .conftest import FAQ_PAIRS, TINY_MODEL
from .consolekit import ADMIN, ADMIN_ID, console_client, console_settings, init_data, login
from .test_admin import TOKEN, llmcore_admin  # noqa: F401 (a fixture: a real llmcore with v0001 current and v0002)

SHAPE = {k: v for k, v in TINY_MODEL.items() if k != "dropout"}


async def sse(client, path: str) -> list[dict]:
    """Every event of a server-sent event stream, until the server ends it."""
    events = []
    async with client.get(path) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    return events


async def test_versions_promote_and_rollback(redis_url, prefix, llmcore_admin):  # noqa: F811
    url, registry = llmcore_admin
    async with console_client(console_settings(redis_url, prefix, llmcore_url=url, llmcore_admin_token=TOKEN)) as (client, c):
        token = await login(client, c, ADMIN)
        page = await (await client.get("/models")).text()
        assert re.search(r"v0001</a> ← current", page) and "v0002</a>" in page
        response = await client.post("/models/promote", data={"csrf": token, "version": "v0002"})
        assert response.status == 200 and registry.current() == "v0002"
        assert re.search(r"v0002</a> ← current", await response.text())
        await client.post("/models/rollback", data={"csrf": token})
        assert registry.current() == "v0001"
        bad = await client.post("/models/promote", data={"csrf": token, "version": "v9999"})
        assert bad.status == 409 and "v9999" in await bad.text() and registry.current() == "v0001"
        png = await client.get("/models/v0002/loss.png")
        assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")
        audit = await (await client.get("/audit")).text()
        assert "model.promote v0002" in audit and "model.rollback" in audit


async def test_a_retrain_from_the_page_streams_its_progress_and_is_promoted(redis_url, prefix, llmcore_admin):  # noqa: F811
    url, registry = llmcore_admin
    settings = console_settings(redis_url, prefix, llmcore_url=url, llmcore_admin_token=TOKEN, retrain_shape=SHAPE,
                                min_training_conversations=5)
    async with console_client(settings) as (client, c):
        token = await login(client, c, ADMIN)
        refused = await client.post("/models/retrain", data={"csrf": token, "arch": "transformer", "minutes": "0.05"})
        assert refused.status == 409 and "Too little data" in await refused.text()
        await c.kefu.faq.add_many([FaqEntry("", q, a, (q + "?", q + "!")) for q, a in FAQ_PAIRS])  # llmcore wants 10 or more
        started = await client.post("/models/retrain", data={"csrf": token, "arch": "transformer", "minutes": "0.05"})
        assert started.status == 200 and 'data-events="/models/events"' in await started.text(), await started.text()
        events = await sse(client, "/models/events")
        assert events[0]["status"] == "running" and "Training job" in events[0]["text"]
        final = events[-1]
        assert final["status"] in ("promoted", "awaiting_decision") and all(e["status"] == "running" for e in events[:-1])
        page = await (await client.get("/models")).text()
        assert 'id="compare"' in page and "v0003" in page
        compare = (await c.kefu.admin.job())["result"].get("compare") or {}  # FAQ_PAIRS as v0001 learned them: left out
        note = f"held-out conversations the current version did not train on (it trained on {compare.get('left_out')})"
        assert compare.get("left_out") and note in page
        job_id = re.search(r'action="/models/jobs/([^/]+)/promote"', page)
        if final["status"] == "awaiting_decision":  # not better on the held-out turns: the admin decides
            await client.post(f"/models/jobs/{job_id.group(1)}/promote", data={"csrf": token})
        assert registry.current() == "v0003"


async def test_the_console_command_sends_admins_a_link_that_logs_in(telegram, redis_url, prefix, llmcore_url):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", admin_ids=str(ADMIN_ID), faq_encoder="none",
                            console_url="https://console.example.com")
    async with running_bot(settings, telegram):
        refused = await ask(telegram, "/console")
        assert refused["text"] == "Not allowed. / 无权限。"
        sent = await ask(telegram, "/console", chat_id=ADMIN_ID, user_id=ADMIN_ID)
        assert sent["link_preview_options"]["is_disabled"]  # a preview would fetch the link
    link = re.search(r"https://console\.example\.com(/login/\S+)", sent["text"]).group(1)
    assert USER_ID != ADMIN_ID
    async with console_client(console_settings(redis_url, prefix)) as (client, _):
        response = await client.post(link, allow_redirects=False)
        assert response.status == 303 and response.cookies[COOKIE]
        assert f"Test ({ADMIN_ID}, admin)" in await (await client.get("/audit")).text()  # the name Telegram gave


async def test_members_of_the_operators_chat_are_operators(telegram, redis_url, prefix, llmcore_url):
    """Neither ADMIN_IDS nor OPERATOR_IDS: Telegram says who is in OPERATOR_CHAT_ID, at /console and in the Mini App."""
    operators, member, outsider, muted, gone = -100555, 4201, 4202, 4203, 4204
    telegram.members[operators] = {member}
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", admin_ids=str(ADMIN_ID), faq_encoder="none",
                            operator_chat_id=operators)
    async with running_bot(settings, telegram):
        assert (await ask(telegram, "/console", chat_id=outsider, user_id=outsider))["text"] == "Not allowed. / 无权限。"
        sent = await ask(telegram, "/console", chat_id=member, user_id=member)
    link = re.search(r"http://\S+(/login/\S+)", sent["text"]).group(1)
    async with console_client(settings) as (client, _):
        assert (await client.post(link, allow_redirects=False)).status == 303
        assert (await client.get("/handoffs")).status == 200 and (await client.get("/faq", allow_redirects=False)).status == 403
        client.session.cookie_jar.clear()
        for user_id, status in ((outsider, 403), (member, 200)):
            data = init_data({"id": user_id, "first_name": "Op"}, token=telegram.token)
            assert (await client.post("/app/login", data={"init_data": data})).status == status
        # muted in the group, an operator still; muted and gone, "restricted" all the same, but no longer one
        telegram.restricted.update({(operators, muted): True, (operators, gone): False})
        for user_id, status in ((muted, 200), (gone, 403)):
            data = init_data({"id": user_id, "first_name": "Op"}, token=telegram.token)
            assert (await client.post("/app/login", data={"init_data": data})).status == status
        client.session.cookie_jar.clear()
        data = init_data({"id": member, "first_name": "Op again"}, token=telegram.token)  # (the same data: a replay)
        assert (await client.post("/app/login", data={"init_data": data})).status == 200
        assert (await client.get("/handoffs", allow_redirects=False)).status == 200
        telegram.members[operators].discard(member)  # the member leaves the group: their session ends at the next check
        assert (await client.get("/handoffs", allow_redirects=False)).status == 200  # (asked of Telegram once a minute)
        client.app[CONSOLE].roles.clock = lambda: time.monotonic() + ROLE_TTL_S + 1
        response = await client.get("/handoffs", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/login"


async def test_telegrams_flood_control_or_absence_is_no_verdict_and_gives_no_more_than_operator(telegram, redis_url, prefix, llmcore_url):
    """A 429 on getChatMember is no "not a member" (it logged every group operator out under flood control); while
    Telegram cannot say, a session keeps its role, but no more than the group can give (an admin taken out of ADMIN_IDS
    kept the admin pages)."""
    from telegram import Bot

    from bot.console.people import role_for

    operators, member, outsider = -100556, 4211, 4212
    telegram.members[operators] = {member}
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", admin_ids=str(ADMIN_ID), faq_encoder="none",
                            operator_chat_id=operators)
    async with Bot(telegram.token, base_url=f"{telegram.base}/bot") as bot:
        assert await role_for(settings, bot, member, unknown="operator") == "operator"
        assert await role_for(settings, bot, outsider, unknown="operator") is None  # Telegram says: not a member
        telegram.flood(2, retry_after=30, methods=("getChatMember",))
        assert await role_for(settings, bot, member, unknown="operator") == "operator"
        assert await role_for(settings, bot, outsider, unknown="admin") == "operator"  # the session said admin
        telegram.unreachable = 2
        assert await role_for(settings, bot, outsider, unknown="admin") == "operator"
        assert await role_for(settings, bot, outsider) is None  # a login: no way in while Telegram cannot say
        assert await role_for(settings, bot, outsider, unknown="operator") is None  # Telegram answers again


async def test_two_versions_side_by_side_on_the_same_held_out_turns(redis_url, prefix, llmcore_admin):  # noqa: F811
    """v0001 learned FAQ_PAIRS by heart, v0002 trained two epochs: on turns v0002 held out (here: those pairs), the page
    shows both answers to each question with their char-F1, and v0001 ahead."""
    from llmcore.chats import Conversation, write_conversations
    from llmcore.registry import HELDOUT

    url, registry = llmcore_admin
    async with console_client(console_settings(redis_url, prefix, llmcore_url=url, llmcore_admin_token=TOKEN)) as (client, c):
        await login(client, c, ADMIN)
        assert 'id="compare-form"' in await (await client.get("/models")).text()
        none_kept = await client.get("/models/compare", params={"a": "v0001", "b": "v0002"})
        assert none_kept.status == 409 and "held-out" in await none_kept.text()  # trained without a validation split
        write_conversations(registry.path("v0002") / HELDOUT, [Conversation([{"role": "user", "content": q}, {"role": "assistant",
                                                                                                           "content": a}])
                                                                for q, a in FAQ_PAIRS])
        trained_on_all = await client.get("/models/compare", params={"a": "v0001", "b": "v0002"})  # v0001 learned FAQ_PAIRS
        assert trained_on_all.status == 200 and 'id="trained-on-them"' in await trained_on_all.text()
        assert (await c.kefu.admin.compare("v0001", "v0002", 5))["other_trained_on_them"] is True
        (registry.path("v0001") / "trained.bin").unlink()  # as a version trained before fingerprints were kept
        result = await c.kefu.admin.compare("v0001", "v0002", 5)
        assert result["other_trained_on_them"] is False
        assert result["heldout_from"] == "v0002" and result["num_turns"] == 5
        assert [row["question"] for row in result["turns"]] == [q for q, _ in FAQ_PAIRS[:5]]
        assert result["char_f1"]["v0001"] > 0.8 > result["char_f1"]["v0002"]  # by heart vs two epochs
        assert result["better"]["v0001"] + result["better"]["v0002"] + result["better"]["tie"] == 5
        page = await client.get("/models/compare", params={"a": "v0001", "b": "v0002"})
        text = await page.text()
        assert page.status == 200 and 'id="side-by-side"' in text
        assert all(q in text and a in text for q, a in FAQ_PAIRS[:5])  # each question with its real answer
        assert (await client.get("/models/compare", params={"a": "v0001", "b": "v0009"})).status == 409
        assert (await client.get("/models/compare", params={"a": "../x", "b": "v0002"}, allow_redirects=False)).status == 303
