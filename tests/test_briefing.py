"""What operators read when a handoff reaches them: the summary says what the bot did and why it gave up."""
from bot.briefing import Case, briefing
from bot.search import FaqEntry, Match

REFUND = FaqEntry("3", "退款多久到账？", "原路退回，1-3个工作日到账。")


def exchange(source: str, score: str = "", version: str = "", rating: str = "", answer: str = "原路退回，1-3个工作日到账。") -> dict:
    return {"question": "钱什么时候退回来", "answer": answer, "source": source, "score": score, "version": version, "rating": rating}


def test_an_faq_answer_rated_down():
    case = Case("Ann (id 1)", 1, "zh", 42, exchange("faq", "0.81", rating="down"), Match(REFUND, 0.81, REFUND.question),
                turns=[{"role": "user", "content": "钱什么时候退回来"}], notes=["转人工"])
    text = briefing(case, faq_best=0.75, faq_suggest=0.4)
    assert text.startswith("🙋 Ann (id 1) asks for a human — chat 1. Language: Chinese. Waiting: 42 s.")
    assert ("Summary: asked “钱什么时候退回来”; the bot answered from the FAQ “原路退回，1-3个工作日到账。” (score 0.81); "
            "the FAQ's best match scored 0.81 (“退款多久到账？”); it answers from 0.75 and suggests from 0.40. "
            "The customer rated that answer 👎. Then they asked for a person.") in text
    assert text.endswith("👤 钱什么时候退回来\n👤 转人工")


def test_a_model_answer_and_a_model_that_did_not_answer():
    model = briefing(Case("Bo", 2, "en", 3700, exchange("model", "-0.42", "v0007", answer="Soon."), None), 0.75, 0.4)
    assert "Waiting: 1 h 1 min." in model and "the bot answered “Soon.” (model v0007, confidence -0.42)" in model
    assert "the FAQ has nothing like it" in model and model.endswith("(no history)")
    silent = briefing(Case("Bo", 2, "en", 0, exchange("fallback"), None), 0.75, 0.4)
    assert "the bot gave up: the model did not answer (unreachable or too slow)" in silent
