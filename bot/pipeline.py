"""One message, end to end (ARCHITECTURE.md): small talk → history → FAQ → model → confidence gate → fallback, then the
exchange goes into the history and the training log. Knows no Telegram: handlers and the shell call it.

    pipeline = Pipeline(settings, history, faq, llm, log)
    reply = await pipeline.answer(chat_id, user_id, "怎么退货？", lang="zh")
    reply.text, reply.source, reply.score, reply.version, reply.suggestions, reply.entry_id
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from bot import smalltalk
from bot.exchanges import Exchange, ExchangeLog
from bot.faq import FaqStore
from bot.history import History
from bot.llm import LlmClient, LlmUnavailable, ModelAnswer
from bot.search import FaqIndex, Match
from bot.settings import BotSettings
from bot.texts import texts

logger = logging.getLogger(__name__)
STITCHED_FROM = 0.4  # char-F1 to the nearest FAQ answer: below, the model says something the FAQ does not
STOCK_ANSWER = 0.9  # at or above, it repeats a FAQ answer


@dataclass
class Reply:
    text: str
    source: str  # faq | smalltalk | model | fallback
    score: float | None  # FAQ score, or the model's confidence
    version: str | None = None  # model version, for model answers
    suggestions: list[Match] = field(default_factory=list)  # "did you mean" FAQ entries
    entry_id: str | None = None  # the training-log entry; feedback attaches to it
    latency_ms: int = 0


class Pipeline:
    def __init__(self, settings: BotSettings, history: History, faq: FaqStore, llm: LlmClient, log: ExchangeLog) -> None:
        self.settings = settings
        self.history = history
        self.faq = faq
        self.llm = llm
        self.log = log

    async def answer(self, chat_id: int, user_id: int, question: str, lang: str) -> Reply:
        started = time.monotonic()
        if (chat := smalltalk.reply_to(question)) is not None:  # "你好", "谢谢", "are you a bot?": canned, ahead of the FAQ
            reply = Reply(chat.text, "smalltalk", 1.0, latency_ms=int((time.monotonic() - started) * 1000))
            await self.record(chat_id, user_id, question, reply)
            return reply
        matches = await self.faq.match(question, k=3)
        if matches and matches[0].score >= self.settings.faq_best:
            reply = Reply(matches[0].entry.answer, "faq", matches[0].score)
        else:
            suggestions = [m for m in matches if m.score >= self.settings.faq_suggest]
            evidence = [m.entry.answer for m in suggestions if m.score >= self.settings.faq_evidence]
            reply = await self._ask_model(chat_id, user_id, question, lang, evidence, matches[0] if matches else None)
            reply.suggestions = suggestions
        reply.latency_ms = int((time.monotonic() - started) * 1000)
        await self.record(chat_id, user_id, question, reply)
        return reply

    async def answer_from_faq(self, chat_id: int, user_id: int, entry_id: str) -> Reply | None:
        """A "did you mean" button: that entry's answer, recorded like any FAQ answer."""
        entry = await self.faq.get(entry_id)
        if entry is None:
            return None
        reply = Reply(entry.answer, "faq", 1.0)
        await self.record(chat_id, user_id, entry.question, reply)
        return reply

    async def record(self, chat_id: int, user_id: int, question: str, reply: Reply) -> None:
        await self.history.append(chat_id, user_id, question, reply.text)
        reply.entry_id = await self.log.append(Exchange(chat_id, user_id, question, reply.text, reply.source, reply.score,
                                                        reply.version, reply.latency_ms))

    async def _ask_model(self, chat_id: int, user_id: int, question: str, lang: str, evidence: list[str],
                         best: Match | None) -> Reply:
        """The model's answer, with the near-miss FAQ answers as evidence it may draw on, if it passes the gates
        (`best`: the question's best FAQ match, already found, which a stock answer must agree with)."""
        # the asker's own earlier turns (in a group, another member's were the model's context, whatever they wrote)
        messages = [*await self.history.recent(chat_id, self.settings.model_history, user_id), {"role": "user", "content": question}]
        try:
            # whole, not streamed: it is judged (gate, FAQ check) before anyone sees it
            answer = await self.llm.answer(messages, self.settings.max_answer_tokens, repetition_penalty=self.settings.repetition_penalty,
                                           evidence=evidence)
        except LlmUnavailable as exc:
            logger.warning("model unavailable, answering with the fallback: %s", exc)
            return Reply(texts(lang).fallback, "fallback", None)
        if not self._confident(answer) or not await self._consistent(answer, best):
            return Reply(texts(lang).fallback, "fallback", answer.confidence, answer.version)
        return Reply(answer.text.strip(), "model", answer.confidence, answer.version)

    async def _consistent(self, answer: ModelAnswer, best: Match | None) -> bool:
        """The knowledge-base check: a small model's mean log-probability is near 0 for right and wrong answers alike,
        so an answer must also fit the FAQ. Text unlike every FAQ answer (learned from operators, say) must be
        near-certain, unless the version's calibrated gate vouched for it; a stock FAQ answer passes only if that entry
        is the question's best FAQ match, scoring KB_CHECK_MIN_SCORE (two matchers agreeing: the model's choice and the
        FAQ's; docs/benchmarks.md); a stitch of stock phrases never does."""
        if not self.settings.kb_check:
            return True
        index = await self.faq.index()
        return await asyncio.to_thread(self._fits, index, answer, best)  # char-F1 to every answer: off the event loop

    def _fits(self, index: FaqIndex, answer: ModelAnswer, best: Match | None) -> bool:
        nearest, similarity = index.nearest_answer(answer.text)
        if nearest is None or similarity < STITCHED_FROM:  # a calibrated version's gate already judged it (_confident)
            return answer.p_correct is not None or (answer.confidence is not None
                                                    and answer.confidence >= self.settings.kb_novel_min_confidence)
        if similarity < STOCK_ANSWER:
            return False
        # the FAQ must agree: the entry is the question's best match, and a good one
        return best is not None and best.entry.id == nearest.id and best.score >= self.settings.kb_check_min_score

    def _confident(self, answer: ModelAnswer) -> bool:
        """The version's calibrated gate when it has one (kefu.p_correct), else the mean log-probability."""
        if not answer.text.strip():
            return False
        if answer.p_correct is not None:
            return answer.p_correct >= self.settings.min_answer_probability
        return answer.confidence is not None and answer.confidence >= self.settings.min_confidence
