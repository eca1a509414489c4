"""Answers before decorations: typing and drafts never hold an answer, and give way under a saturated limiter."""
import asyncio

from telegram.error import RetryAfter

from bot.outbound import AnswersFirst

from .botkit import MODEL_ONLY, ask, model_answer, running_bot, settings_for


async def test_under_a_saturated_limiter_decorations_give_way_and_every_answer_goes():
    limiter = AnswersFirst(overall_max_rate=20, max_retries=0, max_queue=4)
    await limiter.initialize()
    sent: list[str] = []

    async def call(endpoint: str) -> bool:
        sent.append(endpoint)
        return True

    async def request(endpoint: str, chat: int):
        return await limiter.process_request(call, (endpoint,), {}, endpoint, {"chat_id": chat}, None)

    decorations = [request(m, i) for i in range(40) for m in ("sendChatAction", "sendMessageDraft")]
    burst = [request("sendMessage", i) for i in range(40)] + decorations
    results = await asyncio.gather(*burst)
    assert all(r is True for r in results)
    assert sent.count("sendMessage") == 40  # every answer
    assert len(sent) - 40 <= 4 and limiter.skipped >= 76  # decorations only while the queue was short
    await limiter.shutdown()


async def test_a_decoration_that_hits_the_flood_limit_is_dropped_not_retried():
    limiter = AnswersFirst(overall_max_rate=0, max_retries=3)
    await limiter.initialize()
    calls = []

    async def flooded(*_):
        calls.append(1)
        raise RetryAfter(5)

    assert await limiter.process_request(flooded, (), {}, "sendChatAction", {"chat_id": 1}, None) is True
    assert calls == [1]  # not retried: no 5 s pause holding every answer
    await limiter.shutdown()


async def test_slow_drafts_and_typing_do_not_hold_the_answer_or_its_deadline(telegram, redis_url, llmcore_url, prefix, seeded):
    settings = settings_for(telegram, redis_url, llmcore_url, prefix, "polling", llmcore_timeout_s=3)
    telegram.delay_s.update(sendMessageDraft=6, sendChatAction=6)  # each decoration outlasts the deadline
    async with running_bot(settings, telegram):
        reply = await ask(telegram, MODEL_ONLY[0])
        expected = await model_answer(llmcore_url, [{"role": "user", "content": MODEL_ONLY[0]}],
                                      repetition_penalty=settings.repetition_penalty)
        assert reply["text"] == expected.text.strip()  # the model's answer, not the fallback of a missed deadline
        telegram.delay_s.clear()
