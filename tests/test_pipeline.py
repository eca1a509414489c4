"""The answer pipeline without Telegram: FAQ first, the model next, the confidence gate, the record it leaves."""
import pytest
from aiohttp import web

from bot.exchanges import ExchangeLog
from bot.faq import FaqStore
from bot.history import History
from bot.llm import LlmClient
from bot.pipeline import Pipeline
from bot.settings import BotSettings

from .conftest import FAQ_PAIRS, serve_app


@pytest.fixture
async def model_says():
    """A stand-in llmcore whose next answer and confidence the test sets; records what it was asked."""
    state = {"text": "模型的回答", "confidence": -0.05, "p_correct": None, "asked": []}

    async def handler(request: web.Request) -> web.Response:
        state["asked"].append(await request.json())
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": state["text"]}, "finish_reason": "stop"}],
                                  "kefu": {"confidence": state["confidence"], "p_correct": state["p_correct"],
                                           "model_version": "v0042"}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner, state["url"] = await serve_app(app)
    yield state
    await runner.cleanup()


@pytest.fixture
async def pipeline(redis, prefix, model_says):
    settings = BotSettings(_env_file=None, min_confidence=-1.0, faq_best=0.75, faq_suggest=0.4, model_history=4)
    faq = FaqStore(redis, prefix)
    for q, a in FAQ_PAIRS:
        await faq.add(q, a)
    llm = LlmClient(model_says["url"], 5)
    await llm.start()
    yield Pipeline(settings, History(redis, prefix, 20, 600), faq, llm, ExchangeLog(redis, prefix, 30))
    await llm.close()


async def test_faq_answers_without_asking_the_model(pipeline, model_says):
    reply = await pipeline.answer(1, 1, FAQ_PAIRS[0][0], "zh")
    assert (reply.text, reply.source, reply.score) == (FAQ_PAIRS[0][1], "faq", pytest.approx(1.0))
    assert model_says["asked"] == [] and reply.entry_id


async def test_model_answer_passes_the_gate_with_history(pipeline, model_says):
    await pipeline.answer(1, 1, FAQ_PAIRS[0][0], "zh")
    reply = await pipeline.answer(1, 1, "火星上有水吗", "zh")
    assert (reply.text, reply.source, reply.version) == ("模型的回答", "model", "v0042")
    assert model_says["asked"][0]["repetition_penalty"] == 1.2 and model_says["asked"][0]["temperature"] == 0
    assert model_says["asked"][0]["messages"] == [{"role": "user", "content": FAQ_PAIRS[0][0]},
                                                  {"role": "assistant", "content": FAQ_PAIRS[0][1]},
                                                  {"role": "user", "content": "火星上有水吗"}]


@pytest.mark.parametrize("text, confidence", [("没把握的回答", -3.0), ("   ", -0.1), ("没有置信度", None)])
async def test_unsure_or_empty_model_answers_fall_back(pipeline, model_says, text, confidence):
    model_says["text"], model_says["confidence"] = text, confidence
    reply = await pipeline.answer(1, 1, "火星上有水吗", "en")
    assert reply.source == "fallback" and reply.text.startswith("Sorry")
    entries = [e async for _, e in pipeline.log.entries()]
    assert entries[-1]["source"] == "fallback" and entries[-1]["answer"] == reply.text


async def test_near_misses_come_back_as_suggestions_and_go_to_the_model_as_evidence(pipeline, model_says):
    model_says["confidence"] = -5.0
    reply = await pipeline.answer(1, 1, "运费", "zh")
    assert model_says["asked"][-1]["evidence"] == [m.entry.answer for m in reply.suggestions]
    assert reply.source == "fallback" and [m.entry.answer for m in reply.suggestions][:1] == [FAQ_PAIRS[1][1]]
    assert all(0.4 <= m.score < 0.75 for m in reply.suggestions)
    chosen = await pipeline.answer_from_faq(1, 1, reply.suggestions[0].entry.id)
    assert chosen.text == FAQ_PAIRS[1][1] and chosen.source == "faq"
    assert await pipeline.answer_from_faq(1, 1, "999999") is None


async def test_a_weak_near_miss_is_offered_but_not_given_to_the_model(pipeline, model_says):
    model_says["confidence"] = -5.0
    pipeline.settings = pipeline.settings.model_copy(update={"faq_evidence": 0.74})
    reply = await pipeline.answer(1, 1, "运费", "zh")
    assert [m.entry.answer for m in reply.suggestions][:1] == [FAQ_PAIRS[1][1]]
    assert all(m.score < 0.74 for m in reply.suggestions) and "evidence" not in model_says["asked"][-1]


@pytest.mark.parametrize("question, answer, confidence, source", [
    ("火星上有水吗", "模型自己学会的新回答", -0.05, "model"),  # unlike every FAQ answer and near-certain: learned elsewhere
    ("火星上有水吗", "模型自己学会的新回答", -0.4, "fallback"),  # unlike the FAQ and unsure: a guess
    ("火星上有水吗", FAQ_PAIRS[1][1], -0.01, "fallback"),  # a stock answer to a question that has nothing to do with it
    ("运费", FAQ_PAIRS[1][1], -0.01, "model"),  # the stock answer the question points to
    ("运费", FAQ_PAIRS[1][1][:6] + FAQ_PAIRS[0][1][:6], -0.01, "fallback"),  # stitched from two stock answers
])
async def test_model_answers_must_fit_the_knowledge_base(pipeline, model_says, question, answer, confidence, source):
    model_says["text"], model_says["confidence"] = answer, confidence
    reply = await pipeline.answer(1, 1, question, "zh")
    assert reply.source == source, reply


@pytest.mark.parametrize("p_correct, confidence, source", [
    (0.9, -3.0, "model"),  # the version's calibrated gate decides, not the raw log-probability (nor KB_NOVEL_MIN_CONFIDENCE)
    (0.2, -0.01, "fallback"),
    (None, -3.0, "fallback"),  # a version without a gate: the log-probability thresholds as before
    (None, -0.4, "fallback"),
])
async def test_a_versions_calibrated_gate_decides_when_it_has_one(pipeline, model_says, p_correct, confidence, source):
    model_says["text"], model_says["confidence"], model_says["p_correct"] = "模型自己学会的新回答", confidence, p_correct
    reply = await pipeline.answer(1, 1, "火星上有水吗", "zh")
    assert reply.source == source
    assert "evidence" not in model_says["asked"][-1]  # nothing in the FAQ came near: no evidence of the bot's own


async def test_the_gate_does_not_let_a_stock_answer_through_for_an_unrelated_question(pipeline, model_says):
    model_says["text"], model_says["confidence"], model_says["p_correct"] = FAQ_PAIRS[1][1], -0.01, 0.95
    assert (await pipeline.answer(1, 1, "火星上有水吗", "zh")).source == "fallback"  # KB_CHECK still guards stock answers


@pytest.mark.parametrize("question", ["退货要运费吗", "发票和运费", "退货的发票"])
async def test_a_stock_model_answer_must_be_the_questions_best_faq_match(pipeline, model_says, question):
    """Two matchers must agree: the model's stock answer passes for the entry the FAQ ranks first for the question,
    not for another entry the question also matches (how off-topic questions sharing a shop word got stock answers)."""
    pipeline.settings = pipeline.settings.model_copy(update={"kb_check_min_score": 0.2})
    best, other = (await pipeline.faq.index()).match(question, k=2)
    assert 0.2 <= other.score <= best.score < pipeline.settings.faq_best  # both match; neither is answered from the FAQ
    model_says["confidence"] = -0.01
    model_says["text"] = other.entry.answer
    assert (await pipeline.answer(1, 1, question, "zh")).source == "fallback"
    model_says["text"] = best.entry.answer
    assert (await pipeline.answer(2, 2, question, "zh")).source == "model"
    pipeline.settings = pipeline.settings.model_copy(update={"kb_check_min_score": best.score + 0.01})
    assert (await pipeline.answer(3, 3, question, "zh")).source == "fallback"  # the best match, but not good enough
