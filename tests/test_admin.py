"""Admin commands end to end: only ADMIN_IDS get in (an audit line for the others), malformed arguments get
a usage line, FAQ management, /models /promote /rollback, /why, /stats, /export, FAQ documents."""
import asyncio
import contextlib
import json
import logging
import shutil

import pytest

from llmcore.registry import Registry
from llmcore.train import TrainOptions, train

from .botapi import USER_ID, callback_update, message_update, text_update
from .botkit import IN_FAQ, ask, running_bot, settings_for
from .conftest import FAQ_PAIRS, TINY_MODEL, free_port, serve_models

ADMIN = 777
TOKEN = "bot-admin-token"


@pytest.fixture
async def llmcore_admin(tiny_models, tmp_path):
    """A real llmcore with an admin token over a copy of the tiny registry, plus a second version v0002."""
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    data = tmp_path / "more.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                         ensure_ascii=False) for q, a in FAQ_PAIRS) + "\n")
    train(TrainOptions(data=[str(data)], arch="transformer", models=str(root), epochs=2, val_fraction=0.0, progress=False,
                       min_freq=1, model_overrides=TINY_MODEL, device="cpu"))
    runner, url = await serve_models(root, TOKEN, max_batch=4)
    yield url, Registry(root)
    await runner.cleanup()


def admin_settings(telegram, redis_url, llmcore_url, prefix, **extra):
    return settings_for(telegram, redis_url, llmcore_url, prefix, "polling", admin_ids=str(ADMIN), llmcore_admin_token=TOKEN, **extra)


async def as_admin(telegram, text: str) -> dict:
    return await ask(telegram, text, chat_id=ADMIN, user_id=ADMIN)


async def test_strangers_are_refused_and_audited(telegram, redis_url, llmcore_admin, prefix, redis, seeded, caplog):
    url, registry = llmcore_admin
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        with caplog.at_level(logging.WARNING):
            for command in ("/retrain", "/promote v0002", "/faq_add 问 || 答", "/faq_del 1", "/export", "/stats", "/rollback"):
                reply = await ask(telegram, command, username=f"admin{ADMIN}")  # a name that looks like an admin's is nothing
                assert reply["text"] == "Not allowed. / 无权限。"
        assert sum("audit:" in r.getMessage() for r in caplog.records) == 7
    assert registry.current() == "v0001" and len(await seeded.entries()) == 3 and not (registry.root / "jobs").exists()


async def test_faq_management_and_malformed_arguments(telegram, redis_url, llmcore_admin, prefix, seeded):
    url, _ = llmcore_admin
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        assert "Usage" in (await as_admin(telegram, "/faq_add 只有问题"))["text"]
        added = await as_admin(telegram, "/faq_add\nWhat are your opening hours? || 9 to 5")  # a newline ends the command too
        assert (await ask(telegram, "What are your opening hours?"))["text"] == "9 to 5"  # the question's first word kept
        long_ids = []
        for n in range(2):  # two questions of 3,000 characters that compete for a short one: /why quotes them shortened
            added = await as_admin(telegram, f"/faq_add 营业时间{n}" + "，详细说明" * 600 + " || 每天营业。")
            long_ids.append(added["text"].split()[-1].rstrip("."))
        await ask(telegram, "营业时间的详细说明", chat_id=ADMIN, user_id=ADMIN)
        mark = len(telegram.calls)
        await telegram.push(text_update("/why", chat_id=ADMIN, user_id=ADMIN, reply_to=telegram.messages[ADMIN][-1]["message"]))
        _, why = await telegram.wait_for("sendMessage", since=mark)  # the server refuses a text over 4,096: none came before
        assert "，详细说明，详细说明" in why["text"] and "…" in why["text"]  # a long candidate listed, clipped
        assert "by use" in why["text"]  # which encoder scored it: USE alone when sure, else the pair
        for long_id in long_ids:
            await as_admin(telegram, f"/faq_del {long_id}")
        added = await as_admin(telegram, "/faq_add 营业时间是几点？ || 每天9点到21点。")
        entry_id = added["text"].split()[-1].rstrip(".")
        assert (await ask(telegram, "营业时间是几点？"))["text"] == "每天9点到21点。"  # users get it at once
        listing = await as_admin(telegram, "/faq_list")
        assert f"{entry_id}. 营业时间是几点？" in listing["text"]
        assert "Usage" in (await as_admin(telegram, "/faq_del abc"))["text"]
        assert (await as_admin(telegram, f"/faq_del {entry_id}"))["text"] == f"Removed FAQ entry {entry_id}."
        assert (await as_admin(telegram, f"/faq_del {entry_id}"))["text"] == f"No FAQ entry {entry_id}."
        assert "Usage" in (await as_admin(telegram, "/promote nonsense"))["text"]
        assert "Unknown argument" in (await as_admin(telegram, "/retrain foo -3"))["text"]
        assert "between 0 and 120" in (await as_admin(telegram, "/retrain -3"))["text"]


async def test_faq_documents_import_and_bad_ones_change_nothing(telegram, redis_url, llmcore_admin, prefix, seeded):
    url, _ = llmcore_admin
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        good = telegram.add_file("question,answer\n几点发货？,下午四点前下单当天发\n".encode(), "faq.csv")
        reply = await telegram_doc(telegram, good)
        assert reply["text"] == "Imported 1 FAQ entries."
        assert (await ask(telegram, "几点发货？"))["text"] == "下午四点前下单当天发"
        bad_type = telegram.add_file(b"%PDF-1.4", "faq.pdf")
        assert ".jsonl" in (await telegram_doc(telegram, bad_type))["text"]
        broken = telegram.add_file(b'{"messages": 3}\n', "faq.jsonl")
        assert "Nothing was imported: faq.jsonl:1" in (await telegram_doc(telegram, broken))["text"]
        huge = {**telegram.add_file(b"x", "faq.csv"), "file_size": 50 << 20}
        assert "over 5 MB" in (await telegram_doc(telegram, huge))["text"]
    assert len(await seeded.entries()) == 4


async def telegram_doc(telegram, document: dict) -> dict:
    mark = len(telegram.calls)
    await telegram.push(message_update(chat_id=ADMIN, user_id=ADMIN, document=document))
    _, params = await telegram.wait_for("sendMessage", since=mark)
    return params


async def test_models_promote_rollback_why_stats_export(telegram, redis_url, llmcore_admin, prefix, seeded):
    url, registry = llmcore_admin
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        listing = (await as_admin(telegram, "/models"))["text"]
        assert "v0001" in listing and "v0002" in listing and "v0001" in listing.split("← current")[0].splitlines()[-1]
        assert (await as_admin(telegram, "/promote v0002"))["text"] == "✅ v0002 now serves."
        assert registry.current() == "v0002"
        assert "v0009" in (await as_admin(telegram, "/promote v0009"))["text"]  # not found: said, nothing moved
        assert (await as_admin(telegram, "/rollback"))["text"] == "↩️ Rolled back: v0001 now serves."
        assert registry.current() == "v0001"

        answer = await ask(telegram, IN_FAQ[0][0], chat_id=ADMIN, user_id=ADMIN)
        answered = telegram.messages[ADMIN][-1]["message"]
        mark = len(telegram.calls)
        await telegram.push(text_update("/why", chat_id=ADMIN, user_id=ADMIN, reply_to=answered))
        _, why = await telegram.wait_for("sendMessage", since=mark)
        assert "Source: faq" in why["text"] and "FAQ score: 1.000" in why["text"] and IN_FAQ[0][0] in why["text"]
        assert answer["text"] == IN_FAQ[0][1]
        assert "Reply with /why" in (await as_admin(telegram, "/why"))["text"]

        mark = len(telegram.calls)
        await telegram.push(text_update("/stats", chat_id=ADMIN, user_id=ADMIN))
        _, text = await telegram.wait_for("sendMessage", since=mark)
        assert "Today: 1 conversations, 1 messages" in text["text"] and "faq 1" in text["text"] and "v0001" in text["text"]
        assert "Cost per answer: no model answers since llmcore started" in text["text"]  # the FAQ answered, not the model
        await telegram.wait_for("sendPhoto", since=mark)

        mark = len(telegram.calls)
        await telegram.push(text_update("/export", chat_id=ADMIN, user_id=ADMIN))
        _, exported = await telegram.wait_for("sendDocument", since=mark)
        assert exported["caption"] == f"{len(IN_FAQ)} conversations"  # the logged FAQ answer duplicates a FAQ pair


async def test_operators_decision_buttons_need_an_admin(telegram, redis_url, llmcore_admin, prefix, seeded):
    url, registry = llmcore_admin
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        mark = len(telegram.calls)
        await telegram.push(callback_update("job:promote:20260101-000000-001", user_id=USER_ID))
        _, answer = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert answer["text"] == "Not allowed." and registry.current() == "v0001"


async def test_retrain_refuses_little_data_and_runs_one_job_at_a_time(telegram, redis_url, llmcore_admin, prefix, seeded):
    import aiohttp

    url, registry = llmcore_admin
    shape = {k: v for k, v in TINY_MODEL.items() if k != "dropout"}
    async with running_bot(admin_settings(telegram, redis_url, url, prefix, retrain_shape=shape), telegram):
        little = await as_admin(telegram, "/retrain")
        assert "Too little data to retrain: 3 conversations" in little["text"] and not (registry.root / "jobs").exists()
        for i, (q, a) in enumerate(FAQ_PAIRS * 2):
            await seeded.add(f"{q} ({i})", a)  # enough for a job now
        first = await as_admin(telegram, "/retrain lstm 1")
        assert first["text"].startswith("Training job") and "(lstm," in first["text"]
        second = await as_admin(telegram, "/retrain")
        assert second["text"].startswith("A training job is already running:")
        async with aiohttp.ClientSession() as session:  # stop it: this test is not about its result
            async with session.post(f"{url}/admin/train/cancel", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
        _, failed = await telegram.wait_for(lambda m, p: m == "sendMessage" and "Training failed" in p.get("text", ""), timeout=30)
        assert "stopped before it finished" in failed["text"] and registry.current() == "v0001"


async def test_a_retrain_whose_answer_is_lost_reports_the_job_its_request_started(telegram, redis_url, llmcore_admin, prefix, seeded,
                                                                                monkeypatch):
    """A training set of tens of MiB takes a while to travel. When the answer to it is lost (a timeout, a dropped
    connection), the job may well have started: /retrain said "llmcore unreachable" and watched nothing, and the next
    /retrain was refused as busy. It now asks llmcore, and reports and watches the job its request started."""
    import aiohttp
    from aiohttp import web

    from bot import llm

    url, _ = llmcore_admin
    monkeypatch.setattr(llm, "TRAIN_TIMEOUT_S", 1.0)

    others = []  # while set: the bot's training request never reaches llmcore, but someone else's like it does

    async def forward(request: web.Request) -> web.Response:  # llmcore, whose answer to POST /admin/train comes too late
        headers = {"Authorization": request.headers.get("Authorization", ""), "Content-Type": "application/json"}
        data = await request.read()
        if others and request.path == "/admin/train" and request.method == "POST":
            data = json.dumps({**json.loads(data), "request_id": "someone-else"}).encode()
        async with aiohttp.ClientSession() as session, \
                session.request(request.method, url + request.path_qs, data=data, headers=headers) as answer:
            body, status = await answer.read(), answer.status
        if request.method == "POST" and request.path == "/admin/train":
            await asyncio.sleep(3)
        return web.Response(body=body, status=status, content_type="application/json")

    async def cancel_job() -> dict:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/admin/train", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                job = await response.json()
            async with session.post(f"{url}/admin/train/cancel", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
        await asyncio.sleep(1)  # the trainer gone: the job no longer runs
        return job

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    shape = {k: v for k, v in TINY_MODEL.items() if k != "dropout"}
    try:
        async with running_bot(admin_settings(telegram, redis_url, f"http://127.0.0.1:{port}", prefix, retrain_shape=shape), telegram):
            for i, (q, a) in enumerate(FAQ_PAIRS * 2):
                await seeded.add(f"{q} ({i})", a)
            reply = await as_admin(telegram, "/retrain lstm 1")
            job = await cancel_job()
            assert job["status"] == "running" and reply["text"].startswith(f"Training job {job['id']} (lstm,"), reply["text"]
            assert len(job["request_id"]) == 32  # the bot's name for its request, kept with the job
            others.append(True)  # a job of the same kind and size, started by someone else meanwhile, is not this one's
            await as_admin(telegram, "/retrain lstm 1")  # (the first job's watcher may speak first: it is no longer the latest)
            _, refused = await telegram.wait_for(lambda m, p: m == "sendMessage" and "unreachable" in p.get("text", ""), timeout=20)
            job = await cancel_job()
            assert job["request_id"] == "someone-else" and refused["chat_id"] == ADMIN
    finally:
        await runner.cleanup()


async def test_a_watched_job_that_is_no_longer_the_latest_is_let_go(telegram, redis_url, llmcore_admin, prefix, seeded, redis):
    """The job a /retrain watched ended while no bot ran, and another started since (or none is left): the watcher
    polled llmcore every few seconds for good, resumed at every restart, and never reported."""
    url, _ = llmcore_admin
    key = prefix + "retrain"
    await redis.set(key, json.dumps({"job_id": "20200101-000000-001", "chat_id": ADMIN, "message_id": 1}))
    async with running_bot(admin_settings(telegram, redis_url, url, prefix), telegram):
        _, note = await telegram.wait_for(lambda m, p: m == "sendMessage" and "20200101-000000-001" in p.get("text", ""), timeout=20)
        assert note["chat_id"] == ADMIN and "/models" in note["text"]
    assert not await redis.exists(key)


def test_the_retrain_comparison_puts_the_lookup_baseline_beside_the_model():
    from bot.admin import comparison_table

    table = comparison_table({"result": {"version": "v0002", "val_char_f1": 0.451, "val_baseline_char_f1": 0.382,
                                         "val_char_f1_turns": 200, "compare": {"version": "v0001", "val_char_f1": 0.40}}})
    rows = {line.split()[0]: line.split()[1:] for line in table.split("<pre>")[1].split("</pre>")[0].splitlines()[1:]}
    assert rows["char-F1"] == ["0.451", "0.400"] and rows["BM25"][-2] == "0.382"
    assert "200 held-out answers" in table and "must beat it" in table
    # the current version trained on some held-out conversations: both columns are on the rest (llmcore.comparison.compare_with)
    table = comparison_table({"result": {"version": "v0002", "val_char_f1": 0.451, "val_loss_per_char": 2.0, "compare": {
        "version": "v0001", "val_char_f1": 0.40, "val_loss_per_char": 2.5, "new_val_char_f1": 0.47, "new_val_loss_per_char": 1.9,
        "conversations": 30, "left_out": 14, "turns": 28}}})
    rows = {line.split()[0]: line.split()[1:] for line in table.split("<pre>")[1].split("</pre>")[0].splitlines()[1:]}
    assert rows["char-F1"] == ["0.470", "0.400"] and rows["loss/char"] == ["1.900", "2.500"]
    assert "30 held-out conversations the current version did not train on (28 answers; it trained on 14)" in table


async def test_a_tapped_wording_is_approved_by_an_admin_and_then_answered(telegram, redis_url, prefix, seeded):
    from .botkit import buttons
    from .conftest import free_port

    settings = admin_settings(telegram, redis_url, f"http://127.0.0.1:{free_port()}", prefix, faq_best=1.0, faq_suggest=0.05,
                              llmcore_timeout_s=2)
    wording = "退货要怎么弄呢"
    async with running_bot(settings, telegram):
        offered = await ask(telegram, wording)
        tap = next(data for label, data in buttons(offered).items() if data.startswith("faq:") and label == IN_FAQ[0][0])
        mark = len(telegram.calls)
        await telegram.push(callback_update(tap, message=telegram.messages[USER_ID][-1]))
        _, answer = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["text"] == IN_FAQ[0][1], since=mark)

        listed = await as_admin(telegram, "/faq_pending")
        assert wording in listed["text"] and IN_FAQ[0][0] in listed["text"]
        approve = buttons(listed)["✅ Add"]
        mark = len(telegram.calls)
        await telegram.push(callback_update(approve, user_id=USER_ID, message=telegram.messages[ADMIN][-1]))  # not an admin
        _, refused = await telegram.wait_for("answerCallbackQuery", since=mark)
        assert refused["text"] == "Not allowed."
        mark = len(telegram.calls)
        await telegram.push(callback_update(approve, user_id=ADMIN, chat_id=ADMIN, message=telegram.messages[ADMIN][-1]))
        await telegram.wait_for(lambda m, p: m == "sendMessage" and "added to" in p["text"], since=mark)

        again = await ask(telegram, wording, chat_id=USER_ID + 1, user_id=USER_ID + 1)
        assert again["text"] == IN_FAQ[0][1]  # answered directly now: the wording is a question of the entry


async def test_a_large_faq_import_does_not_hold_up_other_chats(telegram, redis_url, redis, prefix):
    """5 MB of FAQ is parsed and indexed (jieba over 50,000 questions: seconds of CPU) in a worker thread: the event
    loop (the bot's, shared with this test) never stalls for long, and another chat is greeted meanwhile."""
    lines, size = [], 0
    while size < (5 << 20) - 1000:
        n = len(lines)
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"问题{n}"}, {"role": "assistant", "content": f"答案{n}"}]},
                                ensure_ascii=False) + "\n")
        size += len(lines[-1].encode())
    rows = (5 << 20) // 4 - 2
    broken = telegram.add_file(b"q,a\n" * rows + b"q,a,b\n", "broken.csv")  # a million rows, a bad one at the end
    good = telegram.add_file("".join(lines).encode(), "big.jsonl")
    settings = settings_for(telegram, redis_url, f"http://127.0.0.1:{free_port()}", prefix, "polling", admin_ids=str(ADMIN),
                            faq_encoder="none")
    other = USER_ID + 5
    async with running_bot(settings, telegram):
        for document, outcome in ((broken, f"Nothing was imported: broken.csv:{rows + 1}"),  # parsing alone
                                  (good, f"Imported {len(lines)} FAQ entries.")):  # parsing, storing, indexing
            mark = len(telegram.calls)
            async with loop_stalls() as stalls:
                await telegram.push(message_update(chat_id=ADMIN, user_id=ADMIN, document=document))
                await telegram.wait_for("getFile", since=mark)
                greeting = await ask(telegram, "/start", chat_id=other, user_id=other)
                _, reply = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == ADMIN, since=mark, timeout=120)
            assert "Kefu" in greeting["text"] and reply["text"].startswith(outcome)
            assert telegram.calls.index(("sendMessage", greeting)) < telegram.calls.index(("sendMessage", reply))
            assert stalls.longest < stalls.elapsed / 3, stalls  # blocking, the CPU work would be one stall of most of it
        assert (await ask(telegram, f"问题{len(lines) - 1}", chat_id=other, user_id=other))["text"] == f"答案{len(lines) - 1}"


class Stalls:
    """The longest time the event loop did not come back to a task that only sleeps STALL_TICK_S."""

    def __init__(self) -> None:
        self.longest = self.elapsed = 0.0

    def __repr__(self) -> str:
        return f"Stalls(longest={self.longest:.3f} s of {self.elapsed:.3f} s)"


STALL_TICK_S = 0.005


@contextlib.asynccontextmanager
async def loop_stalls():
    loop, stalls = asyncio.get_running_loop(), Stalls()

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(STALL_TICK_S)
            stalls.longest, last = max(stalls.longest, loop.time() - last - STALL_TICK_S), loop.time()

    started, ticker = loop.time(), asyncio.create_task(tick())
    try:
        yield stalls
    finally:
        ticker.cancel()
        stalls.elapsed = loop.time() - started
