"""The FAQ matcher: Okapi BM25 over every question and similar question, scores normalized to [0, 1].

    index = FaqIndex([FaqEntry("1", "怎么退货？", "七天内可以在订单页申请退货。", ("能退货吗",))])
    matches = index.match("请问怎么退货", k=3)   # [Match(entry, score=1.0, matched="怎么退货？")], best first
    tokenize("How do I return my order?")      # ["return", "order"]

Each question and each similar question is a document. A query's BM25 score against a document is
divided by the score the query gets against itself as a document (same idf, same average length), so
a threshold means the same for a two-word and a twenty-word question. Query words the index has never
seen weigh in that self-score with the largest idf there is (a word in no document), so a question of
unknown words cannot score high on the one word it shares with the FAQ. A query equal to a document
once case, width, punctuation and spaces are ignored scores 1.0 and ranks before any other 1.0.

One departure from textbook BM25: a document's term frequency counts at most the query's. Otherwise
"今天股市怎么样" scores 0.47 against "今天买的今天能发出吗" (twice 今天) — more for one shared word than the
query gives itself — and the self-score would not bound documents as long as the query.

Built once per FAQ version (bot/faq.py); the BM25 itself (llmcore/retrieval.py, shared with the model's
evidence search) precomputes term frequencies, document lengths and an inverted index, so a query costs
its jieba segmentation plus the postings of its words.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from llmcore.retrieval import Bm25, char_f1, normalize, tokenize

__all__ = ["FaqEntry", "FaqIndex", "Match", "normalize", "tokenize"]


@dataclass(frozen=True)
class FaqEntry:
    id: str
    question: str
    answer: str
    similar: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    entry: FaqEntry
    score: float  # in [0, 1]
    matched: str  # the question or similar question that scored best


class FaqIndex:
    """BM25 over the questions of `entries`; match() gives each entry's best document."""

    def __init__(self, entries: list[FaqEntry]) -> None:
        self.entries = list(entries)
        self.doc_entry: list[int] = []  # document -> index of its entry
        self.doc_text: list[str] = []
        self.exact: dict[str, list[int]] = {}  # normalized text -> documents
        for e, entry in enumerate(self.entries):
            for text in (entry.question, *entry.similar):
                doc = len(self.doc_text)
                self.doc_entry.append(e)
                self.doc_text.append(text)
                self.exact.setdefault(normalize(text), []).append(doc)
        self.bm25 = Bm25(tokenize(text) for text in self.doc_text)

    def match(self, text: str, k: int = 3) -> list[Match]:
        """Up to k entries sharing a word with `text` (or equal to it), best first; ties go to the earlier entry."""
        key = normalize(text)
        exact = set(self.exact.get(key, ())) if key else set()
        scores = self.bm25.scores(Counter(tokenize(text)))
        scores.update(dict.fromkeys(exact, 1.0))
        best: dict[int, tuple[float, bool, int]] = {}  # entry -> (score, exact, -document): the larger, the better
        for doc, score in scores.items():
            entry, candidate = self.doc_entry[doc], (score, doc in exact, -doc)
            if score > 0 and (entry not in best or candidate > best[entry]):
                best[entry] = candidate
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], not item[1][1], item[0]))[: max(k, 0)]
        return [Match(self.entries[entry], score, self.doc_text[-neg_doc]) for entry, (score, _, neg_doc) in ranked]

    def nearest_answer(self, text: str) -> tuple[FaqEntry | None, float]:
        """The entry whose answer is most like `text` (character F1), and how alike: is a model answer a stock one?"""
        best, similarity = None, 0.0
        for entry in self.entries:
            value = char_f1(text, entry.answer)
            if value > similarity:
                best, similarity = entry, value
        return best, similarity

    def score_for(self, text: str, entry_id: str) -> float:
        """How well `text` matches one entry (0 when it shares nothing with it)."""
        return next((m.score for m in self.match(text, k=len(self.entries)) if m.entry.id == entry_id), 0.0)
