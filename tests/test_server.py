"""The inference service over HTTP: OpenAI-compatible answers, streaming, limits, overload, admin, hot reload."""
import asyncio
import json
import os
import time

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from llmcore.prompting import build_prompt
from llmcore.registry import Registry
from llmcore.sampling import SamplingParams, generate
from llmcore.server import WORKER, create_app
from llmcore.settings import ServeSettings
from llmcore.train import TrainOptions, train
from llmcore.worker import Worker

from .conftest import FAQ_PAIRS, free_port

TOKEN = "s3cret-admin-token"
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 96, "dropout": 0.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A registry with two versions of a tiny model that learned the FAQ; v0001 is current."""
    root = tmp_path_factory.mktemp("models")
    data = root / "faq.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                         ensure_ascii=False) for q, a in FAQ_PAIRS) + "\n")
    for seed, promote in ((0, True), (1, False)):
        train(TrainOptions(data=[str(data)], arch="transformer", models=str(root / "reg"), epochs=120, val_fraction=0.0,
                           lr=5e-3, seed=seed, promote=promote, progress=False, min_freq=1, model_overrides=TINY, device="cpu",
                           evidence_k=0))
    return root / "reg"


@pytest.fixture(scope="module")
def rag_models(tmp_path_factory):
    """A tiny model trained with evidence: each FAQ answer under two wordings, so each learned to copy the other's."""
    root = tmp_path_factory.mktemp("rag-models")
    data = root / "faq.jsonl"
    rows = [(q, a) for q, a in FAQ_PAIRS] + [(f"请问{q}", a) for q, a in FAQ_PAIRS]
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                         ensure_ascii=False) for q, a in rows) + "\n")
    train(TrainOptions(data=[str(data)], arch="transformer", models=str(root / "reg"), epochs=60, val_fraction=0.0, lr=5e-3,
                       promote=True, progress=False, min_freq=1, model_overrides={**TINY, "block_size": 160}, device="cpu",
                       evidence_k=2))
    return root / "reg"


async def start(models, **settings) -> TestClient:
    options = {"models": models, "admin_token": TOKEN, "request_timeout_s": 30, **settings}
    config = ServeSettings(**options)
    worker = Worker(Registry(models), torch.device("cpu"), max_batch=config.max_batch, max_queue=config.max_queue)
    client = TestClient(TestServer(create_app(config, worker)))
    await client.start_server()
    return client


@pytest.fixture
async def client(models):
    Registry(models).promote("v0001")
    client = await start(models)
    yield client
    await client.close()


def ask(question: str, **extra) -> dict:
    return {"model": "kefu", "messages": [{"role": "user", "content": question}], **extra}


async def test_answer_matches_the_model_and_carries_kefu_fields(client, models):
    response = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=40))
    assert response.status == 200
    body = await response.json()
    loaded = Registry(models).load("v0001")
    prompt = loaded.tokenizer.encode_prompt([{"role": "user", "content": FAQ_PAIRS[0][0]}])
    [expected] = generate(loaded.model, [prompt], SamplingParams(max_new_tokens=40), loaded.tokenizer.stop_ids)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": loaded.tokenizer.decode(expected.token_ids)}
    assert choice["finish_reason"] == expected.finish_reason
    assert body["usage"]["completion_tokens"] == len(expected.token_ids)
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["kefu"]["model_version"] == "v0001" == body["model"]
    assert body["kefu"]["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
    assert body["kefu"]["evidence"] == []  # trained without evidence: none in its prompts, not even a request's own
    assert body["kefu"]["p_correct"] is None  # nothing was held out: no gate was fitted


async def test_evidence_from_the_version_and_the_request_goes_into_the_prompt(rag_models):
    client = await start(rag_models)
    try:
        loaded = Registry(rag_models).load()
        messages = [{"role": "user", "content": FAQ_PAIRS[1][0]}]
        body = await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[1][0], max_tokens=40))).json()
        prompt, hits = build_prompt(loaded.tokenizer, loaded.index, loaded.recipe, messages, 160 - 40)
        [expected] = generate(loaded.model, [prompt], SamplingParams(max_new_tokens=40), loaded.tokenizer.stop_ids)
        assert body["choices"][0]["message"]["content"] == loaded.tokenizer.decode(expected.token_ids)
        assert [e["text"] for e in body["kefu"]["evidence"]] == [h.response for h in hits] and hits[0].response == FAQ_PAIRS[1][1]
        assert body["usage"]["prompt_tokens"] == len(prompt)
        own = "满99元包邮，不满收10元。"
        body = await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[1][0], evidence=[own]))).json()
        assert [e["text"] for e in body["kefu"]["evidence"]] == [own, FAQ_PAIRS[1][1]]  # the caller's first
        for bad in (["x"] * 5, ["y" * 40_000], "not a list"):
            response = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[1][0], evidence=bad))
            assert response.status == 400 and "evidence" in (await response.json())["error"]["message"]
    finally:
        await client.close()


async def test_streamed_answer_equals_the_plain_one(client):
    plain = await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[1][0]))).json()
    response = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[1][0], stream=True))
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    raw = (await response.read()).decode()
    events = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


async def test_max_tokens_and_stop_are_honoured(client):
    full = (await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[2][0], max_tokens=60))).json())
    text = full["choices"][0]["message"]["content"]
    short = await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[2][0], max_tokens=2))).json()
    assert short["usage"]["completion_tokens"] == 2 and short["choices"][0]["finish_reason"] == "length"
    assert text.startswith(short["choices"][0]["message"]["content"])
    stop = text[5:8]
    stopped = await (await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[2][0], max_tokens=60, stop=[stop]))).json()
    assert stopped["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_long_history_is_cut_from_the_oldest_turns_not_refused(client):
    history = [{"role": r, "content": "很长的历史 " * 40} for r in ("user", "assistant") * 10]
    response = await client.post("/v1/chat/completions", json={"messages": history + [{"role": "user", "content": FAQ_PAIRS[0][0]}]})
    assert response.status == 200
    assert (await response.json())["usage"]["prompt_tokens"] <= 96


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "messages"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "role"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "content"),
    (json.dumps(ask("hi", max_tokens=0)).encode(), 400, "max_tokens"),
    (json.dumps(ask("hi", max_tokens=10**6)).encode(), 400, "max_tokens"),
    (json.dumps(ask("hi", temperature="hot")).encode(), 400, "temperature"),
    (json.dumps({**ask("hi"), "model": "gpt-9"}).encode(), 404, "gpt-9"),
    (json.dumps(ask("x" * (1 << 20))).encode(), 413, "bytes"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "not valid JSON"),  # nested past reading
    (b'{"max_tokens": ' + b"1" * 5000 + b"}", 400, "not valid JSON"),  # past int()'s digits
    (json.dumps({**ask("hi"), "evidence": ["\ud800"]}).encode(), 400, "evidence"),  # sent back: must be UTF-8
    (json.dumps(ask("hi", repetition_penalty=1e-300)).encode(), 400, "repetition_penalty"),  # made a logit infinite
])
async def test_bad_requests_get_openai_style_errors(client, body, status, fragment):
    response = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = (await response.json())["error"]
    assert fragment in error["message"] and error["type"]


async def test_any_integer_seed_is_accepted_and_reproduces_its_text(client):
    """OpenAI's seed is any integer: a negative one or one past 64 bits is a seed like another, not an error."""
    for seed in (-1, 2**70 + 5, 0):
        texts = []
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=ask("你好", max_tokens=12, temperature=1.0, seed=seed))
            assert response.status == 200
            texts.append((await response.json())["choices"][0]["message"]["content"])
        assert texts[0] == texts[1]


async def test_queue_full_answers_503_with_retry_after_and_everyone_gets_an_answer(models):
    Registry(models).promote("v0001")
    client = await start(models, max_batch=1, max_queue=1)
    try:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=ask("你好", max_tokens=30, temperature=1.0, seed=i))
                                           for i in range(12)))
        statuses = [r.status for r in responses]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        for r in responses:
            body = await r.json()
            if r.status == 503:
                assert r.headers["Retry-After"] and body["error"]["code"] == "queue_full"
            else:
                assert body["choices"][0]["message"]["content"] is not None
    finally:
        await client.close()


async def test_health_models_and_metrics(client):
    health = await (await client.get("/healthz")).json()
    assert health["ready"] and health["version"] == "v0001" and health["device"] == "cpu"
    await client.post("/v1/chat/completions", json=ask("你好", max_tokens=3))
    models_ = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models_["data"]] == ["v0001"]
    metrics = await (await client.get("/metrics")).text()
    assert 'kefu_llm_requests_total{outcome="ok"}' in metrics and "kefu_llm_time_to_first_token_seconds_bucket" in metrics
    assert 'kefu_llm_model_info{device="cpu",version="v0001"} 1.0' in metrics


async def test_what_answers_cost_is_counted_per_generated_token(client, models):
    from llmcore.costs import step_flops

    loaded = Registry(models).load("v0001")
    messages = [{"role": "user", "content": FAQ_PAIRS[0][0]}]
    prompt, _ = build_prompt(loaded.tokenizer, loaded.index, loaded.recipe, messages, 96 - 6)
    response = await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "ignore_eos": True})
    assert (await response.json())["usage"]["completion_tokens"] == 6
    expected = step_flops(loaded.model.config, [len(prompt)], list(range(len(prompt), len(prompt) + 5))) / 6
    cost = (await (await client.get("/admin/versions", headers={"Authorization": f"Bearer {TOKEN}"})).json())["cost"]
    assert cost["generated_tokens"] == 6 and cost["flops_per_token"] == pytest.approx(expected)
    metrics = await (await client.get("/metrics")).text()
    gauge = next(line for line in metrics.splitlines() if line.startswith("kefu_llm_flops_per_generated_token "))
    assert float(gauge.split()[1]) == pytest.approx(expected)
    assert "kefu_llm_generated_tokens_total 6.0" in metrics
    if cost["energy_unavailable"]:  # a VM without RAPL (like CI): the reason is given, and no figure is made up
        assert cost["joules_per_1k_tokens"] is None and 'kefu_llm_energy_info{reason="' in metrics
    else:
        assert cost["joules_per_1k_tokens"] > 0


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                             ({"Authorization": f"Bearer {TOKEN}"}, 200)])
async def test_admin_routes_need_the_token(client, headers, status):
    response = await client.get("/admin/versions", headers=headers)
    assert response.status == status
    if status == 200:
        body = await response.json()
        assert [v["version"] for v in body["versions"]] == ["v0001", "v0002"] and body["served"] == "v0001"


async def test_an_admin_token_header_that_is_not_utf8_is_refused_not_a_crash(client):
    url = client.make_url("/admin/versions")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /admin/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 401")
    writer.close()


async def test_admin_disabled_without_a_configured_token(models):
    client = await start(models, admin_token=None)
    try:
        response = await client.post("/admin/promote", json={"version": "v0002"}, headers={"Authorization": "Bearer "})
        assert response.status == 403 and Registry(models).current() == "v0001"
    finally:
        await client.close()


async def test_promote_under_load_finishes_requests_in_flight_on_the_old_version(client, models):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    long = {"max_tokens": 80, "ignore_eos": True}  # greedy, and long enough to be generating when the promote comes
    questions = [q for q, _ in FAQ_PAIRS] * 3
    old = {q: (await (await client.post("/v1/chat/completions", json=ask(q, **long))).json())["choices"][0]["message"]["content"]
           for q in set(questions)}  # what v0001 says
    streams = [await client.post("/v1/chat/completions", json=ask(q, stream=True, **long)) for q in questions]
    read = []
    for stream in streams:  # each one has produced text: it is in the engine, on v0001
        while not (line := await stream.content.readline()).startswith(b"data: ") or '"content": ""' in line.decode():
            pass
        read.append(line.decode())
    in_flight = (await (await client.get("/healthz")).json())["active"]
    promoted = await client.post("/admin/promote", json={"version": "v0002"}, headers=auth)
    assert promoted.status == 200 and (await promoted.json())["served"] == "v0002"
    after = [await client.post("/v1/chat/completions", json=ask(q, max_tokens=20)) for q, _ in FAQ_PAIRS]
    assert in_flight == len(streams)  # all were still generating when the promote was asked for
    for question, stream, first in zip(questions, streams, read):
        raw = first + (await stream.read()).decode()
        events = [e[len("data: "):] for e in raw.split("\n\n") if e.startswith("data: ") and e != "data: [DONE]"]
        chunks = [json.loads(e) for e in events]
        assert stream.status == 200 and chunks[-1]["kefu"]["model_version"] == "v0001"  # finished on the old version
        assert old[question].endswith("".join(c["choices"][0]["delta"].get("content", "") for c in chunks))  # its weights
    assert [r.status for r in after] == [200] * len(after)
    assert {(await r.json())["kefu"]["model_version"] for r in after} == {"v0002"}  # new requests: the new version
    assert (await (await client.get("/healthz")).json())["version"] == "v0002" and Registry(models).current() == "v0002"


async def test_server_follows_current_moved_by_another_process(client, models):
    Registry(models).promote("v0002")
    for _ in range(50):
        if (await (await client.get("/healthz")).json())["version"] == "v0002":
            break
        await asyncio.sleep(0.1)
    assert (await (await client.get("/healthz")).json())["version"] == "v0002"


async def test_client_that_disconnects_mid_stream_frees_its_slot(client):
    response = await client.post("/v1/chat/completions", json=ask("你好", stream=True, max_tokens=80, temperature=1.0, seed=3))
    await response.content.readline()
    response.close()  # hang up mid-stream
    for _ in range(50):
        health = await (await client.get("/healthz")).json()
        if health["active"] == 0:
            break
        await asyncio.sleep(0.1)
    assert health["active"] == 0


async def test_the_openai_client_works_plain_and_streamed(client):
    openai = pytest.importorskip("openai")
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    reply = await api.chat.completions.create(model="kefu", messages=[{"role": "user", "content": FAQ_PAIRS[0][0]}], max_tokens=40)
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens > 0
    stream = await api.chat.completions.create(model="kefu", messages=[{"role": "user", "content": FAQ_PAIRS[0][0]}],
                                               max_tokens=40, stream=True)
    streamed = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert streamed == text
    await api.close()


async def test_a_lagging_reader_gets_the_tokens_that_piled_up_in_one_update():
    from llmcore.engine import Sequence, StepEvent
    from llmcore.worker import Submission

    seq = Sequence([1, 2], SamplingParams(), None)
    submission = Submission(seq, served=None)
    for token in (5, 6, 7):
        submission.queue.put_nowait(StepEvent(seq, token, -0.1, False))
    batches = submission.updates()
    assert [e.token for e in await anext(batches)] == [5, 6, 7]
    submission.queue.put_nowait(StepEvent(seq, 8, -0.1, False))
    submission.queue.put_nowait(StepEvent(seq, None, None, True))
    submission.queue.put_nowait(StepEvent(seq, 9, -0.1, False))  # nothing is read past the end
    assert [e.token for e in await anext(batches)] == [8, None]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_an_engine_step_that_breaks_fails_the_requests_in_flight_and_the_server_goes_on(client, monkeypatch):
    from llmcore.engine import Engine

    real_step, calls = Engine.step, []

    def broken_once(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("step exploded")
        return real_step(self)

    monkeypatch.setattr(Engine, "step", broken_once)
    first = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=20, ignore_eos=True))
    assert first.status == 500 and "step exploded" in (await first.json())["error"]["message"]
    second = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=20, ignore_eos=True))
    assert second.status == 200 and (await second.json())["usage"]["completion_tokens"] == 20
    health = await (await client.get("/healthz")).json()
    assert health["ready"] and health["queue_depth"] == 0


async def test_the_engine_loop_outlives_a_failure_outside_a_step(client, monkeypatch):
    """An error in the engine thread outside Engine.step (the step's metrics, an energy counter) ended the loop for good:
    every later request waited for its timeout while /healthz said ready. Now what was in flight fails, the rest is served."""
    worker, calls = client.server.app[WORKER], []
    real = worker.metrics.step_done

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("metrics exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker.metrics, "step_done", broken_once)
    first = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=20, ignore_eos=True))
    assert first.status == 500
    second = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=20, ignore_eos=True))
    assert second.status == 200 and (await second.json())["usage"]["completion_tokens"] == 20
    assert (await (await client.get("/healthz")).json())["ready"]


async def test_a_prompt_is_answered_by_the_version_that_tokenized_it(client, models, monkeypatch):
    """A promotion may land while a request's prompt is being built (off the event loop) with the old version's
    tokenizer: the old version answers it (its ids would mean other characters to the new one); the next request
    goes to the new version."""
    import llmcore.server as server

    worker, loop = client.server.app[WORKER], asyncio.get_running_loop()
    real, swapped = server._prepare, []

    def prepare_then_swap(*args):
        prepared = real(*args)
        if not swapped:
            swapped.append(asyncio.run_coroutine_threadsafe(worker.promote("v0002"), loop).result())
        return prepared

    monkeypatch.setattr(server, "_prepare", prepare_then_swap)
    question = ask(FAQ_PAIRS[0][0], max_tokens=20)
    first = await (await client.post("/v1/chat/completions", json=question)).json()
    assert swapped == ["v0002"] and first["kefu"]["model_version"] == "v0001"
    second = await (await client.post("/v1/chat/completions", json=question)).json()
    assert second["kefu"]["model_version"] == "v0002"


async def test_a_stream_that_fails_after_it_began_ends_with_an_error_event_the_bot_understands(client, monkeypatch):
    from bot.llm import LlmClient, LlmUnavailable
    from llmcore.engine import Engine

    real_step = Engine.step

    def breaks_once_a_token_is_out(self):
        if any(s.output.token_ids for s in self.scheduler.running):
            raise RuntimeError("step exploded")
        return real_step(self)

    monkeypatch.setattr(Engine, "step", breaks_once_a_token_is_out)
    response = await client.post("/v1/chat/completions", json=ask(FAQ_PAIRS[0][0], max_tokens=20, ignore_eos=True, stream=True))
    assert response.status == 200  # the stream had begun
    events = [line[len("data: "):] for line in (await response.read()).decode().split("\n\n") if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"  # the stream had begun before the failure
    error = json.loads(events[-1])["error"]
    assert "step exploded" in error["message"] and error["type"] == "server_error"
    assert "[DONE]" not in events  # a failed stream does not claim to be complete

    shown = []

    async def show(text: str) -> None:
        shown.append(text)

    llm = LlmClient(str(client.make_url("")).rstrip("/"), timeout_s=10)
    await llm.start()
    try:
        with pytest.raises(LlmUnavailable):
            await llm.answer([{"role": "user", "content": FAQ_PAIRS[0][0]}], max_tokens=20, on_text=show)
    finally:
        await llm.close()


def test_the_engine_decodes_with_one_cpu_less_and_prefills_with_all_unless_told(monkeypatch, tiny_models):
    """`llmcore serve` sets torch's threads: decode steps use the CPUs it may use less one (at least one), prefills all
    of them; LLMCORE_THREADS / LLMCORE_PREFILL_THREADS and the flags override both."""
    from aiohttp import web

    from llmcore.__main__ import main
    from llmcore.server import WORKER

    for cpus, expected in ((1, (1, 1)), (2, (1, 2)), (8, (7, 8))):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert ServeSettings(_env_file=None).torch_threads() == expected
    assert ServeSettings(_env_file=None, threads=3, prefill_threads=5).torch_threads() == (3, 5)
    monkeypatch.setenv("LLMCORE_THREADS", "2")
    monkeypatch.setenv("LLMCORE_PREFILL_THREADS", "4")
    assert ServeSettings(_env_file=None).torch_threads() == (2, 4)

    applied, apps, before = [], [], torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    monkeypatch.setattr(web, "run_app", lambda app, **kwargs: apps.append(app))  # everything up to serving
    assert main(["serve", "--models", str(tiny_models), "--threads", "5", "--prefill-threads", "6"]) == 0
    monkeypatch.delenv("LLMCORE_THREADS")
    monkeypatch.delenv("LLMCORE_PREFILL_THREADS")
    assert main(["serve", "--models", str(tiny_models)]) == 0
    assert applied == [5, 7] and torch.get_num_threads() == before
    assert [app[WORKER].engine_options["prefill_threads"] for app in apps] == [6, 8]


async def test_a_long_system_message_leaves_the_question_in_the_prompt(tiny_models, monkeypatch):
    """A system message over the prompt's budget is cut; the question stays (it went, and every question got one answer)."""
    client = await start(tiny_models)
    try:
        worker, prompts = client.server.app[WORKER], []
        submit = worker.submit
        monkeypatch.setattr(worker, "submit", lambda prompt, *args, **kwargs: prompts.append(prompt) or submit(prompt, *args, **kwargs))
        system = {"role": "system", "content": "你是一个友好的网店客服，请用简短的中文回答顾客的问题。" * 4}
        for question, _ in FAQ_PAIRS[:2]:
            body = {"messages": [system, {"role": "user", "content": question}], "max_tokens": 60}
            assert (await client.post("/v1/chat/completions", json=body)).status == 200
        tokenizer = worker.served.loaded.tokenizer
        assert [tokenizer.decode(p).endswith(q) for p, (q, _) in zip(prompts, FAQ_PAIRS)] == [True, True]
        assert all(p[0] == tokenizer.bos_id and len(p) <= 96 - 60 for p in prompts)
    finally:
        await client.close()


async def test_a_client_that_hangs_up_on_a_plain_answer_stops_its_generation(tiny_models, monkeypatch):
    """The app as `llmcore serve` runs it: a client that hangs up cancels its handler, which cancels its sequence. With
    aiohttp's default (handler_cancellation off), a plain answer was generated to the end for nobody."""
    from aiohttp import web

    from llmcore.__main__ import main
    from llmcore.engine import Engine

    served = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(web, "run_app", lambda app, **kwargs: served.append((app, kwargs)))
    assert main(["serve", "--models", str(tiny_models)]) == 0
    [(app, kwargs)] = served
    step = Engine.step
    monkeypatch.setattr(Engine, "step", lambda engine: time.sleep(0.05) or step(engine))  # 80 tokens: 4 s at least
    runner = web.AppRunner(app, handler_cancellation=kwargs.get("handler_cancellation", False))  # as run_app builds it
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    worker = app[WORKER]
    try:
        body = json.dumps(ask("你好", max_tokens=80, ignore_eos=True)).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        for _ in range(100):
            if worker.active:
                break
            await asyncio.sleep(0.02)
        assert worker.active == 1
        writer.close()  # hang up before the answer
        deadline = time.monotonic() + 2
        while (worker.active or worker.queue_depth) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.active == 0 and worker.queue_depth == 0
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path, timeout", [("/v1/chat/completions", "llmcore.api.BODY_TIMEOUT_S"),
                                           ("/admin/train", "llmcore.admin.TRAINING_BODY_TIMEOUT_S")])
async def test_a_body_sent_in_part_then_stalled_is_answered_408(tiny_models, monkeypatch, path, timeout):
    """Slowloris: headers and part of a body, then nothing. The connection was held for good."""
    monkeypatch.setattr(timeout, 0.5, raising=False)  # (raising: the code before the fix had no such limit)
    client = await start(tiny_models)
    try:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
        error = json.loads(await reader.readexactly(length))["error"]
        assert "body not received" in error["message"] and error["code"] == "body_timeout"
        writer.close()
    finally:
        await client.close()


async def test_a_comparison_whose_client_left_still_holds_the_one_comparison_slot(tiny_models, monkeypatch):
    """Its handler is cancelled, its thread runs on: a second comparison must wait for that thread, not start beside it."""
    import threading

    release = threading.Event()
    monkeypatch.setattr("llmcore.admin.compare_versions", lambda *args: release.wait(10) and {"turns": []})
    client = await start(tiny_models)
    try:
        compare, auth = {"a": "v0001", "b": "v0002", "turns": 2}, {"Authorization": f"Bearer {TOKEN}"}
        first = asyncio.create_task(client.post("/admin/compare", json=compare, headers=auth))
        await asyncio.sleep(0.3)
        first.cancel()  # the client hangs up mid-comparison
        await asyncio.sleep(0.2)
        busy = await client.post("/admin/compare", json=compare, headers=auth)
        assert busy.status == 409 and (await busy.json())["error"]["code"] == "busy"
        release.set()
        for _ in range(50):
            again = await client.post("/admin/compare", json=compare, headers=auth)
            if again.status != 409:
                break
            await asyncio.sleep(0.1)
        assert again.status == 200
    finally:
        release.set()
        await client.close()
