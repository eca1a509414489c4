"""What operators see when a handoff reaches them: who and which chat, the customer's language, how long they have
waited, a one-paragraph summary (what was asked, what the bot answered, why it gave up: the FAQ's best score, the
model's confidence), and the transcript with what the customer wrote since. Plain text, in English (the operators'
language); knows no Telegram and no Redis.

    text = briefing(Case(who, chat_id, "zh", waited_s=95, last=exchange, best=match, turns=turns, notes=notes),
                    faq_best=0.75, faq_suggest=0.4)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bot.search import Match
from bot.stats import duration

LANGUAGES = {"zh": "Chinese", "en": "English"}


@dataclass(frozen=True)
class Case:
    who: str
    chat_id: int
    lang: str
    waited_s: float
    last: dict[str, str] | None  # the chat's latest logged exchange (bot/exchanges.py), with its rating
    best: Match | None  # the FAQ's best match for its question
    turns: list[dict[str, str]] = field(default_factory=list)  # the recent history
    notes: list[str] = field(default_factory=list)  # what the customer wrote after it: the request, messages left


def briefing(case: Case, faq_best: float, faq_suggest: float) -> str:
    head = (f"🙋 {case.who} asks for a human — chat {case.chat_id}. Language: {LANGUAGES.get(case.lang, case.lang)}. "
            f"Waiting: {duration(case.waited_s)}.")
    how = "Reply to this message to answer (the first operator to answer, or to /claim it, has the chat); /done as a reply closes."
    return "\n\n".join([head, summary(case, faq_best, faq_suggest), how, "\n".join(transcript(case)) or "(no history)"])


def summary(case: Case, faq_best: float, faq_suggest: float) -> str:
    """One paragraph: what was asked, what the bot answered, why it gave up."""
    last = case.last
    if last is None:
        return "Summary: the customer asked for a person before asking the bot anything."
    faq = (f"the FAQ's best match scored {case.best.score:.2f} (“{case.best.matched}”)" if case.best is not None
           else "the FAQ has nothing like it") + f"; it answers from {faq_best:.2f} and suggests from {faq_suggest:.2f}"
    rated = " The customer rated that answer 👎." if last.get("rating") == "down" else ""
    return f"Summary: asked “{last['question']}”; {answered(last)}; {faq}.{rated} Then they asked for a person."


def answered(last: dict[str, str]) -> str:
    """What the bot did with the question, and how sure it was."""
    source, score, version = last["source"], last.get("score") or "", last.get("version") or ""
    model = f"model {version}, " if version else "the model, "
    if source == "fallback" and score:
        return f"the bot gave up: {model}confidence {float(score):.2f}, too unsure to answer"
    if source == "fallback":
        return "the bot gave up: the model did not answer (unreachable or too slow)"
    if source == "model":
        return f"the bot answered “{last['answer']}” ({model}confidence {float(score):.2f})"
    if source == "faq":
        return f"the bot answered from the FAQ “{last['answer']}” (score {float(score):.2f})"
    return f"the bot answered “{last['answer']}” ({source})"


def transcript(case: Case) -> list[str]:
    return [f"{'👤' if m['role'] == 'user' else '🤖'} {m['content']}" for m in case.turns] + [f"👤 {note}" for note in case.notes]

