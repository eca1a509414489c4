"""The llmcore client: real answers (plain and streamed), and every way the service can fail ends in
LlmUnavailable within the deadline — retries on 503 with Retry-After, a circuit breaker."""
import asyncio
import time

import pytest
from aiohttp import web

from bot.llm import CircuitBreaker, LlmClient, LlmUnavailable
from llmcore.registry import Registry
from llmcore.sampling import SamplingParams, generate

from .conftest import FAQ_PAIRS, free_port, serve_app


@pytest.fixture
async def client_for():
    clients = []

    async def make(url: str, timeout_s: float = 10, breaker: CircuitBreaker | None = None) -> LlmClient:
        client = LlmClient(url, timeout_s, breaker)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def fake_llmcore(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return await serve_app(app)


async def test_plain_and_streamed_answers_come_from_the_model(llmcore_url, tiny_models, client_for):
    llm = await client_for(llmcore_url)
    question = [{"role": "user", "content": FAQ_PAIRS[1][0]}]
    loaded = Registry(tiny_models).load("v0001")
    [expected] = generate(loaded.model, [loaded.tokenizer.encode_prompt(question)], SamplingParams(max_new_tokens=40),
                          loaded.tokenizer.stop_ids)
    plain = await llm.answer(question, max_tokens=40)
    assert plain.text == loaded.tokenizer.decode(expected.token_ids) and plain.version == "v0001"
    assert plain.confidence == pytest.approx(expected.confidence, abs=1e-3)
    seen = []

    async def show(text: str) -> None:
        seen.append(text)

    streamed = await llm.answer(question, max_tokens=40, on_text=show)
    assert streamed == plain
    assert seen and seen[-1] == plain.text and all(b.startswith(a) for a, b in zip(seen, seen[1:]))


async def test_unreachable_service_fails_fast_and_opens_the_breaker(client_for):
    llm = await client_for(f"http://127.0.0.1:{free_port()}", timeout_s=3, breaker=CircuitBreaker(threshold=2, probe_s=60))
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(LlmUnavailable):
            await llm.answer([{"role": "user", "content": "hi"}], 8)
        assert time.monotonic() - started < 3.5
    started = time.monotonic()
    with pytest.raises(LlmUnavailable, match="circuit open"):
        await llm.answer([{"role": "user", "content": "hi"}], 8)
    assert time.monotonic() - started < 0.05  # no request at all while open


async def test_the_breaker_lets_one_trial_through_and_closes_when_the_service_is_back(client_for):
    up = asyncio.Event()
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if not up.is_set():
            return web.json_response({"error": {"message": "down"}}, status=400)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "好"}, "finish_reason": "stop"}],
                                  "kefu": {"confidence": -0.1, "model_version": "v1"}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner, url = await serve_app(app)
    breaker = CircuitBreaker(threshold=2, probe_s=0.3, max_probe_s=5)
    llm = await client_for(url, breaker=breaker)
    question = [{"role": "user", "content": "hi"}]
    try:
        for _ in range(2):
            with pytest.raises(LlmUnavailable, match="HTTP 400"):
                await llm.answer(question, 8)
        assert breaker.is_open and len(calls) == 2
        with pytest.raises(LlmUnavailable, match="circuit open"):
            await llm.answer(question, 8)
        await asyncio.sleep(0.35)
        trials = await asyncio.gather(*(llm.answer(question, 8) for _ in range(5)), return_exceptions=True)
        assert len(calls) == 3 and all(isinstance(t, LlmUnavailable) for t in trials)  # one trial; it failed
        assert breaker.wait_s == pytest.approx(0.6)  # and the next one comes later
        await asyncio.sleep(0.35)
        with pytest.raises(LlmUnavailable, match="circuit open"):
            await llm.answer(question, 8)
        up.set()
        await asyncio.sleep(0.3)
        assert (await llm.answer(question, 8)).text == "好"  # the trial succeeded: closed
        assert not breaker.is_open and (await llm.answer(question, 8)).text == "好"
    finally:
        await runner.cleanup()


async def test_503_is_retried_after_retry_after(client_for):
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.json_response({"error": {"message": "queue full"}}, status=503, headers={"Retry-After": "1"})
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "好的"}, "finish_reason": "stop"}],
                                  "kefu": {"confidence": -0.2, "model_version": "v0009"}})

    runner, url = await fake_llmcore(handler)
    try:
        answer = await (await client_for(url)).answer([{"role": "user", "content": "hi"}], 8)
    finally:
        await runner.cleanup()
    assert answer.text == "好的" and answer.version == "v0009" and len(calls) == 2
    assert calls[1] - calls[0] >= 0.95  # Retry-After was honoured


async def test_a_slow_or_broken_service_ends_within_the_deadline(client_for):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", content_type="text/html")

    for handler, timeout in ((slow, 1.0), (garbage, 5.0)):
        runner, url = await fake_llmcore(handler)
        try:
            started = time.monotonic()
            with pytest.raises(LlmUnavailable):
                await (await client_for(url, timeout_s=timeout)).answer([{"role": "user", "content": "hi"}], 8)
            assert time.monotonic() - started < timeout + 0.5
        finally:
            await runner.cleanup()


@pytest.mark.parametrize("body", [
    {"choices": [{"message": {"content": "好"}, "finish_reason": "stop"}], "kefu": "v1"},
    {"choices": [{"message": {"content": 42}, "finish_reason": "stop"}]},
    {"choices": [{"message": {"content": "好"}, "finish_reason": "stop"}], "kefu": {"confidence": "-0.1"}},
    {"choices": [{"message": {"content": "好"}, "finish_reason": "stop"}], "kefu": {"p_correct": True}},
    {"choices": [{"message": {"content": "好"}, "finish_reason": "stop"}], "kefu": {"model_version": ["v1"]}},
    {"choices": "好"},
])
async def test_an_answer_of_the_wrong_shape_is_llmcore_unavailable(client_for, body):
    """A body that parses but is not what the API promises (a proxy, a wrong service on the port) is a failure the
    breaker counts and the bot answers with its fallback, not a field that breaks the pipeline later."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body)

    runner, url = await fake_llmcore(handler)
    try:
        llm = await client_for(url)
        with pytest.raises(LlmUnavailable, match="malformed"):
            await llm.answer([{"role": "user", "content": "hi"}], 8)
    finally:
        await runner.cleanup()
