"""The console's routes through aiohttp's test client against the real Redis: who gets in (no session, an operator,
a used link, a missing CSRF token), the inbox and an exchange (correct, add to FAQ, mark reviewed), the FAQ pages, the
audit page, the security headers, and hostile customer text."""
import html
import re
import time
from html.parser import HTMLParser

import pytest

from bot.console.auth import LOGIN_ATTEMPTS_PER_MINUTE
from bot.console.base import COOKIE
from bot.search import FaqEntry
from bot.trainingset import build_training_set

from .conftest import keys_with
from .consolekit import ADMIN, ADMIN_ID, OPERATOR, console_client, console_settings, csrf, init_data, log_exchange, login

PUBLIC = {"/login", "/login/{token}", "/app", "/app/login", "/static/{name}", "/healthz"}
SAMPLE = {"token": "x", "name": "console.css", "id": "1-0", "version": "v0001", "job_id": "j1", "decision": "promote", "verdict": "approve"}


def routes(app) -> list[tuple[str, str, str]]:
    """(method, path with sample values, role) of every route but HEAD."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info()
        template = info.get("formatter") or info.get("path")
        if route.method == "HEAD":
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: SAMPLE.get(m.group(1), "1"), template)
        found.append((route.method, path, getattr(route.handler, "role", "admin"), template))
    return found


def tags(page: str, name: str | None = None) -> list[dict]:
    """The attributes of every tag (named `name`) in the page, as a browser's parser sees them."""
    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if name is None or tag == name:
                found.append(dict(attrs))

    Parser().feed(page)
    return found


@pytest.fixture
async def console(redis_url, prefix):
    async with console_client(console_settings(redis_url, prefix)) as pair:
        yield pair


async def test_every_route_needs_a_session(console):
    client, _ = console
    checked = 0
    for method, path, _, template in routes(client.app):
        if template in PUBLIC:
            continue
        response = await client.request(method, path, allow_redirects=False)
        expected = (303,) if method == "GET" else (401,)
        assert response.status in expected, (method, path, response.status)
        if method == "GET":
            assert response.headers["Location"] == "/login"
        checked += 1
    assert checked >= 20


async def test_a_session_follows_its_persons_role_now_not_at_login(console):
    """Taken out of ADMIN_IDS (or out of the operators' group), someone kept the console until the session ended."""
    from bot.console.people import Roles

    client, c = console
    await login(client, c, ADMIN)
    admin_page = next(path for method, path, role, template in routes(client.app)
                      if role == "admin" and method == "GET" and "{" not in template)
    assert (await client.get(admin_page, allow_redirects=False)).status == 200
    c.roles = Roles(c.settings.model_copy(update={"admin_ids": [], "operator_ids": [ADMIN_ID]}), None)
    assert (await client.get(admin_page, allow_redirects=False)).status == 403  # an operator now
    assert (await client.get("/", allow_redirects=False)).status == 200
    c.roles = Roles(c.settings.model_copy(update={"admin_ids": [], "operator_ids": []}), None)
    response = await client.get("/", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"  # neither: the session is over
    c.roles = Roles(c.settings, None)
    assert (await client.get("/", allow_redirects=False)).status == 303  # and stays over


async def test_operators_get_403_on_admin_pages_and_in_on_theirs(console):
    client, c = console
    token = await login(client, c, OPERATOR)
    allowed = 0
    for method, path, role, template in routes(client.app):
        if role == "admin":
            response = await client.request(method, path, data={"csrf": token}, allow_redirects=False)
            assert response.status == 403, (method, path, response.status)
        elif role == "operator" and method == "GET" and "{" not in template:
            assert (await client.get(path)).status == 200, path
            allowed += 1
    assert allowed >= 2
    page = await (await client.get("/")).text()
    assert 'href="/faq"' not in page and 'href="/models"' not in page  # no links to pages they cannot open


async def test_a_post_without_the_csrf_token_changes_nothing(console):
    client, c = console
    token = await login(client, c)
    entry_id = await log_exchange(c, "发票怎么开？", "抱歉……", "fallback")
    before = len(await c.kefu.faq.entries())
    for data in ({}, {"csrf": "wrong"}, {"csrf": ""}):
        add = await client.post("/faq/add", data={**data, "question": "几点开门？", "answer": "九点。"}, allow_redirects=False)
        fix = await client.post(f"/exchange/{entry_id}/correct", data={**data, "answer": "下单时选电子发票。"}, allow_redirects=False)
        assert add.status == fix.status == 403
    assert len(await c.kefu.faq.entries()) == before
    assert [e["source"] async for _, e in c.kefu.log.entries()] == ["fallback"]
    ok = await client.post("/faq/add", data={"csrf": token, "question": "几点开门？", "answer": "九点。"}, allow_redirects=False)
    assert ok.status == 303 and len(await c.kefu.faq.entries()) == before + 1  # the same request with the token works


async def test_a_link_logs_in_once_with_a_safe_cookie(console):
    client, c = console
    token = await c.auth.issue_link(ADMIN)
    landing = await client.get(f"/login/{token}")
    assert landing.status == 200 and 'id="login-button"' in await landing.text()  # opening it (a link preview) uses nothing
    response = await client.post(f"/login/{token}", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and int(cookie["max-age"]) == 12 * 3600 and cookie["path"] == "/"
    assert (await client.get("/", allow_redirects=False)).status == 200
    client.session.cookie_jar.clear()
    again = await client.post(f"/login/{token}", allow_redirects=False)
    assert again.status == 403 and COOKIE not in again.cookies
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_posts_from_another_site_are_refused(console):
    client, c = console
    token = await c.auth.issue_link(ADMIN)
    forged = await client.post(f"/login/{token}", headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert forged.status == 403 and COOKIE not in forged.cookies
    same = await client.post(f"/login/{token}", headers={"Origin": str(client.make_url("")).rstrip("/")}, allow_redirects=False)
    assert same.status == 303  # the link was not used up by the refused request


async def test_login_attempts_are_rate_limited(console):
    client, c = console
    statuses = [(await client.post(f"/login/guess{i}", allow_redirects=False)).status for i in range(LOGIN_ATTEMPTS_PER_MINUTE + 1)]
    assert statuses == [403] * LOGIN_ATTEMPTS_PER_MINUTE + [429]
    token = await c.auth.issue_link(ADMIN)
    assert (await client.post(f"/login/{token}", allow_redirects=False)).status == 429  # even a good link, this minute
    assert await c.auth.redeem_link(token) == ADMIN  # which was not used up


def test_a_console_session_lasts_at_least_a_minute():
    """0.0001 hours passed validation and every login answered 500: Redis refuses a zero expiry (the link used up)."""
    with pytest.raises(ValueError, match="console_session_hours"):
        console_settings("redis://127.0.0.1:9/0", "p:", console_session_hours=0.0001)
    assert console_settings("redis://127.0.0.1:9/0", "p:", console_session_hours=1 / 60).console_session_hours == 1 / 60


@pytest.mark.parametrize("trusted", ["", "127.0.0.0/8"])
async def test_behind_a_trusted_proxy_login_attempts_are_counted_per_client(redis_url, prefix, trusted):
    """Behind nginx every request comes from its address: a stranger's bad attempts refused every login. From a proxy
    named in CONSOLE_TRUSTED_PROXIES the client is its X-Real-IP; from anyone else the header counts for nothing."""
    settings = console_settings(redis_url, prefix, console_trusted_proxies=trusted)
    async with console_client(settings) as (client, c):
        stranger, admin = {"X-Real-IP": "203.0.113.9"}, {"X-Real-IP": "198.51.100.7"}
        for i in range(LOGIN_ATTEMPTS_PER_MINUTE + 1):
            last = await client.post(f"/login/guess{i}", headers=stranger, allow_redirects=False)
        assert last.status == 429
        token = await c.auth.issue_link(ADMIN)
        assert (await client.post(f"/login/{token}", headers=admin, allow_redirects=False)).status == (303 if trusted else 429)
        unusable = {"X-Real-IP": "not an address"}  # counted by the peer's own address then, the proxy's
        assert (await client.post("/login/guess", headers=unusable, allow_redirects=False)).status == (403 if trusted else 429)


async def test_the_mini_app_logs_in_with_init_data_once(console):
    client, _ = console
    data = init_data({"id": ADMIN_ID, "first_name": "Ann", "language_code": "zh-hans"})
    assert (await client.get("/app")).status == 200
    response = await client.post("/app/login", data={"init_data": data})
    assert response.status == 200 and (await response.json())["ok"] and response.cookies[COOKIE]["httponly"]
    page = await (await client.get("/")).text()
    assert "待审" in page  # the admin's Telegram language
    client.session.cookie_jar.clear()
    assert (await client.post("/app/login", data={"init_data": data})).status == 403  # replayed
    stranger = init_data({"id": 4242, "first_name": "Eve"})
    assert (await client.post("/app/login", data={"init_data": stranger})).status == 403
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_the_inbox_shows_what_needs_review_with_counts_and_filters(console):
    client, c = console
    await login(client, c, OPERATOR)
    three_days_ago = int((time.time() - 3 * 86_400) * 1000)
    old = {"chat_id": "1", "user_id": "1", "question": "上周的问题", "answer": "抱歉", "source": "fallback", "score": "", "version": "",
           "latency_ms": "1"}
    await c.kefu.redis.xadd(c.kefu.log.stream, old, id=f"{three_days_ago}-0")  # the log's first entry: an older id is refused later
    await log_exchange(c, "怎么退货？", "七天内可以在订单页申请退货。", "faq", 0.98)
    await log_exchange(c, "发票抬头能改吗？", "抱歉，这个问题我还不能确定地回答。", "fallback", -2.1)
    await log_exchange(c, "运费多少？", "满69元包邮。", "model", -0.9)  # low confidence
    await log_exchange(c, "会员有什么权益？", "积分翻倍。", "model", -0.1, rating="down")
    await log_exchange(c, "how long is delivery?", "2-3 days.", "model", -0.1, rating="up")
    page = await (await client.get("/")).text()
    shown = re.findall(r'<span class="q">([^<]+)</span>', page)
    assert shown == ["会员有什么权益？", "运费多少？", "发票抬头能改吗？", "上周的问题"]  # newest first; not the FAQ answer nor the 👍 one
    assert re.search(r'value="todo"[^>]*>\s*\S+ <span class="count">4</span>', page)
    today = await (await client.get("/", params={"days": "1"})).text()
    assert "上周的问题" not in today and re.search(r'value="todo"[^>]*>\s*\S+ <span class="count">3</span>', today)
    assert "上周的问题" in await (await client.get("/", params={"days": "7"})).text()
    fallbacks = await (await client.get("/", params={"show": "all", "source": "fallback"})).text()
    assert re.findall(r'<span class="q">([^<]+)</span>', fallbacks) == ["发票抬头能改吗？", "上周的问题"]
    ups = await (await client.get("/", params={"show": "all", "rating": "up"})).text()
    assert re.findall(r'<span class="q">([^<]+)</span>', ups) == ["how long is delivery?"]
    searched = await (await client.get("/", params={"show": "all", "q": "包邮"})).text()
    assert re.findall(r'<span class="q">([^<]+)</span>', searched) == ["运费多少？"]


async def test_correcting_an_exchange_teaches_the_training_set(console):
    client, c = console
    token = await login(client, c, OPERATOR)
    await log_exchange(c, "之前的问题", "之前的回答", "faq", 0.9)
    entry_id = await log_exchange(c, "发票抬头能改吗？", "抱歉，这个问题我还不能确定地回答。", "fallback", -2.1)
    await log_exchange(c, "那怎么办", "您可以联系客服。", "model", -0.3, rating="down")
    await log_exchange(c, "别的聊天", "别的回答", "faq", 0.9, chat_id=556)
    page = await (await client.get(f"/exchange/{entry_id}")).text()
    chat = re.search(r'<ol class="chat">(.*?)</ol>', page, re.S).group(1)
    assert re.findall(r'<p class="user">([^<]+)</p>', chat) == ["之前的问题", "发票抬头能改吗？", "那怎么办"]  # this chat's only
    assert "👎 您可以联系客服。" in chat
    assert "之前的问题" in page and 'id="correct-form"' in page and 'action="/exchange/' + entry_id + '/faq"' not in page
    response = await client.post(f"/exchange/{entry_id}/correct", data={"csrf": token, "answer": "开票后30天内可在订单页修改抬头。"})
    assert response.status == 200 and 'id="done"' in await response.text()
    records = await build_training_set(c.kefu.log, c.kefu.faq)
    taught = [r for r in records if r["messages"][-1]["content"] == "开票后30天内可在订单页修改抬头。"]
    assert len(taught) == 3 and taught[0]["messages"][-2]["content"] == "发票抬头能改吗？" and taught[0]["meta"]["pin"]
    assert "发票抬头能改吗？" not in await (await client.get("/")).text()  # reviewed: gone from the inbox
    assert (await client.post(f"/exchange/{entry_id}/correct", data={"csrf": token, "answer": ""}, allow_redirects=False)).status == 303
    assert (await client.get("/exchange/1-0")).status == 404 and (await client.get("/exchange/nonsense")).status == 404
    await c.kefu.forget_user(555)  # the customer's /forget: their words leave the console with the log, audit included
    assert "发票抬头能改吗？" not in await (await client.get("/", params={"show": "all"})).text()
    assert await keys_with(c.kefu.redis, c.settings.redis_prefix, "发票抬头") == []


async def test_an_admin_adds_an_exchange_to_the_faq_and_the_audit_shows_it(console):
    client, c = console
    token = await login(client, c)
    first = await c.kefu.faq.add("怎么退货？", "七天内可以在订单页申请退货。")
    entry_id = await log_exchange(c, "我想退掉这个东西", "抱歉……", "fallback")
    await client.post(f"/exchange/{entry_id}/faq", data={"csrf": token, "mode": "similar", "entry_id": first})
    assert (await c.kefu.faq.get(first)).similar == ("我想退掉这个东西",)
    other = await log_exchange(c, "营业时间？", "抱歉……", "fallback")
    await client.post(f"/exchange/{other}/faq", data={"csrf": token, "mode": "new", "question": "营业时间？", "answer": "每天9点到21点。"})
    assert (await c.kefu.faq.match("营业时间？"))[0].entry.answer == "每天9点到21点。"
    seen = await log_exchange(c, "谢谢", "不客气。", "smalltalk")
    for _ in range(3):  # marked once: a repeated POST pushed older entries out of the capped audit log
        await client.post(f"/exchange/{seen}/reviewed", data={"csrf": token})
    await client.post(f"/exchange/{other}/reviewed", data={"csrf": token})  # marked when it went into the FAQ
    audit = await (await client.get("/audit")).text()
    for action in ("login.link", "faq.similar", "faq.add", "exchange.reviewed"):
        assert action in audit
    assert "Ann (9001, admin)" in audit
    assert [e.action for e in await c.audit.latest()].count("exchange.reviewed") == 1


async def test_the_faq_pages_add_edit_try_and_delete(console):
    client, c = console
    token = await login(client, c)
    fields = {"csrf": token, "question": "运费多少钱？", "answer": "满69元包邮。", "similar": "邮费多少\n\n运费怎么算"}
    await client.post("/faq/add", data=fields)
    entry = (await c.kefu.faq.entries())[0]
    assert entry.similar == ("邮费多少", "运费怎么算")
    edit = await client.get(f"/faq/{entry.id}")
    assert "运费怎么算" in await edit.text()
    await client.post(f"/faq/{entry.id}", data={"csrf": token, "question": "运费多少钱？", "answer": "满99元包邮。", "similar": "邮费多少"})
    assert (await c.kefu.faq.get(entry.id)).answer == "满99元包邮。"
    tried = await (await client.get("/faq", params={"try": "邮费多少"})).text()
    assert re.search(r'<td>1\.00</td><td><a href="/faq/' + entry.id, tried)
    assert "满99元包邮。" in await (await client.get("/faq", params={"q": "99"})).text()
    assert (await client.post(f"/faq/{entry.id}", data={"csrf": token, "question": "", "answer": "x"}, allow_redirects=False)).status == 303
    await client.post(f"/faq/{entry.id}/delete", data={"csrf": token})
    assert await c.kefu.faq.get(entry.id) is None and (await client.get(f"/faq/{entry.id}")).status == 404


async def test_saving_the_edit_form_as_it_was_changes_nothing_and_loses_no_wording_added_meanwhile(console):
    """A customer's two-line wording (learned from a tap) came back from the form's one-per-line list as two questions
    ("你好" then matched the returns entry); a wording approved while the form was open was lost by its save."""
    client, c = console
    token = await login(client, c)
    entry_id = await c.kefu.faq.add("怎么退货？", "七天内可以退货。")
    assert await c.kefu.faq.add_similar(entry_id, "你好\n我想退货怎么办")
    assert (await c.kefu.faq.get(entry_id)).similar == ("你好 我想退货怎么办",)

    def form_of(page: str) -> dict:
        fields = {f["name"]: f.get("value", "") for f in tags(page, "input") if f.get("name")}
        for name in ("answer", "similar"):
            fields[name] = html.unescape(re.search(rf'<textarea name="{name}"[^>]*>(.*?)</textarea>', page, re.S).group(1))
        return fields

    fields = form_of(await (await client.get(f"/faq/{entry_id}")).text())
    assert fields["csrf"] == token and fields["question"] == "怎么退货？"
    await client.post(f"/faq/{entry_id}", data=fields)
    before = await c.kefu.faq.get(entry_id)
    assert before.similar == ("你好 我想退货怎么办",) and before.answer == "七天内可以退货。"

    fields = form_of(await (await client.get(f"/faq/{entry_id}")).text())
    assert await c.kefu.faq.add_similar(entry_id, "退货流程是什么")  # approved while the form is open
    saved = await client.post(f"/faq/{entry_id}", data={**fields, "answer": "十天内可以退货。"}, allow_redirects=False)
    assert saved.headers["Location"] == f"/faq/{entry_id}?error=changed"
    assert await c.kefu.faq.get(entry_id) == FaqEntry(entry_id, "怎么退货？", "七天内可以退货。", ("你好 我想退货怎么办", "退货流程是什么"))
    again = await (await client.get(saved.headers["Location"])).text()
    assert "退货流程是什么" in again and "the entry changed since this form was opened" in html.unescape(again)


async def test_customers_wordings_are_approved_or_rejected_on_the_faq_page(console):
    """Taps on "did you mean" buttons the bot offered propose the customer's wording; the FAQ page lists the proposals,
    an approved wording is searched at once, a rejected one is gone, each decided once, operators cannot decide."""
    client, c = console
    token = await login(client, c)
    entry_id = await c.kefu.faq.add("退款多久到账？", "退款一般3到5个工作日原路退回。")
    learned = c.kefu.paraphrases
    await learned.offered(700, 1, "钱什么时候退给我", [entry_id])
    await learned.offered(701, 1, "<b>退钱要几天</b>", [entry_id])
    assert await learned.tapped(700, 1, entry_id, user_id=700) and await learned.tapped(701, 1, entry_id, user_id=701)
    page = await (await client.get("/faq")).text()
    forms = [f["action"] for f in tags(page, "form") if "/faq/pending/" in f.get("action", "")]
    assert len(forms) == 4 and "钱什么时候退给我" in page and "&lt;b&gt;退钱要几天&lt;/b&gt;" in page
    keys = {p.wording: p.key for p in await learned.pending()}
    approve, reject = f"/faq/pending/{keys['钱什么时候退给我']}/approve", f"/faq/pending/{keys['<b>退钱要几天</b>']}/reject"
    assert (await client.post(approve, data={"csrf": token}, allow_redirects=False)).headers["Location"] == "/faq?done=approve"
    assert (await c.kefu.faq.get(entry_id)).similar == ("钱什么时候退给我",)
    assert (await c.kefu.faq.match("钱什么时候退给我"))[0].score == 1.0  # searched at once
    again = await client.post(approve, data={"csrf": token}, allow_redirects=False)
    assert again.headers["Location"] == "/faq?error=decided"
    await login(client, c, OPERATOR)
    refused = await client.post(reject, data={"csrf": await csrf(client)}, allow_redirects=False)
    assert refused.status == 403 and len(await learned.pending()) == 1
    token = await login(client, c)
    await client.post(reject, data={"csrf": token})
    assert await learned.pending() == [] and (await c.kefu.faq.get(entry_id)).similar == ("钱什么时候退给我",)
    audit = await (await client.get("/audit")).text()
    assert "faq.approve" in audit and "faq.reject" in audit


async def test_headers_and_escaping(console):
    client, c = console
    await login(client, c)
    entry_id = await log_exchange(c, '<script>alert(1)</script><img src=x onerror="alert(2)">', "<b>bold</b>", "fallback")
    for path in ("/", f"/exchange/{entry_id}", "/login", "/nope"):
        response = await client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"  # a login link never leaves in a Referer
        body = await response.text()
        assert "<script>alert" not in body and "<img src=x" not in body and "<b>bold" not in body
        assert tags(body, "script") in ([], [{"src": "/static/console.js", "defer": None}])  # our one script file, nothing inline
        assert not [name for attrs in tags(body) for name in attrs if name.startswith("on")]  # no inline event handlers
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in await (await client.get(f"/exchange/{entry_id}")).text()


async def test_the_faq_imports_a_file_whole_or_not_at_all_and_exports_it(console):
    from aiohttp import FormData

    client, c = console
    token = await login(client, c)

    def upload(content: bytes, name: str) -> FormData:
        data = FormData()
        data.add_field("csrf", token)
        data.add_field("file", content, filename=name, content_type="text/csv")
        return data

    bad = await client.post("/faq/import", data=upload("question,answer\n几点发货？,下午四点前\n只有一列\n".encode(), "faq.csv"))
    assert bad.status == 400 and "faq.csv:3" in await bad.text() and await c.kefu.faq.count() == 0
    assert (await client.post("/faq/import", data=upload(b"%PDF", "faq.pdf"))).status == 400
    good = await client.post("/faq/import", data=upload("question,answer\n几点发货？,下午四点前\n".encode(), "faq.csv"))
    assert good.status == 200 and 'id="imported"' in await good.text()
    assert (await c.kefu.faq.match("几点发货？"))[0].entry.answer == "下午四点前"
    exported = await client.get("/faq/export.jsonl")
    assert "attachment" in exported.headers["Content-Disposition"]
    assert '"content": "下午四点前"' in await exported.text()
    no_csrf = FormData()
    no_csrf.add_field("file", b"question,answer\na,b\n", filename="faq.csv")
    assert (await client.post("/faq/import", data=no_csrf)).status == 403 and await c.kefu.faq.count() == 1
    assert "faq.import faq.csv" in await (await client.get("/audit")).text()


async def test_handoffs_show_open_chats_and_operators_answers_the_faq_lacks(console):
    client, c = console
    token = await login(client, c, OPERATOR)
    await c.kefu.faq.add("怎么退货？", "七天内可以在订单页申请退货。")
    assert await c.kefu.handoffs.open(777, 777, "我的包裹丢了，电话13812345678")
    await log_exchange(c, "退货怎么弄", "七天内可以在订单页申请退货。", "operator", chat_id=777)  # the FAQ says it already
    lacking = await log_exchange(c, "能开专票吗？", "可以，在发票页选择增值税专用发票。", "operator", chat_id=778)
    page = await (await client.get("/handoffs")).text()
    opened = re.search(r'id="handoffs">(.*?)</ul>', page, re.S).group(1)
    assert "chat 777" in opened and "我的包裹丢了" in opened and "13812345678" not in page  # scrubbed when stored
    proposed = re.search(r'id="proposed">(.*?)</ul>', page, re.S).group(1)
    assert f"/exchange/{lacking}" in proposed and "退货怎么弄" not in proposed
    await client.post(f"/exchange/{lacking}/reviewed", data={"csrf": token})
    assert "能开专票吗？" not in await (await client.get("/handoffs")).text()


async def test_healthz_answers_the_probes_without_a_session(console, prefix):
    client, _ = console
    response = await client.get("/healthz", allow_redirects=False)
    assert response.status == 200 and (await response.json())["ready"] is True
    async with console_client(console_settings("redis://127.0.0.1:9/0", prefix)) as (away, _):  # nothing listens there
        response = await away.get("/healthz", allow_redirects=False)
        assert response.status == 503 and (await response.json())["redis"] is False


async def test_over_https_a_mini_app_session_survives_telegrams_web_frame(redis_url, prefix):
    """In web.telegram.org the Mini App is a cross-site frame: its cookie is SameSite=None, Secure, Partitioned; a link
    login (a top-level page) keeps SameSite=Lax and Secure."""
    settings = console_settings(redis_url, prefix, console_url="https://kefu.example.com:9443")
    async with console_client(settings) as (client, c):
        response = await client.post("/app/login", data={"init_data": init_data({"id": ADMIN_ID, "first_name": "Ann"})})
        cookie = response.headers["Set-Cookie"]
        assert response.status == 200 and all(flag in cookie for flag in ("SameSite=None", "Secure", "Partitioned", "HttpOnly"))
        token = await c.auth.issue_link(ADMIN)
        linked = (await client.post(f"/login/{token}", allow_redirects=False)).headers["Set-Cookie"]
        assert "SameSite=Lax" in linked and "Secure" in linked and "Partitioned" not in linked
