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

Built once per FAQ version (bot/faq.py): term frequencies, document lengths and an inverted index are
precomputed, so a query costs its jieba segmentation plus the postings of its words.
"""
from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass

import jieba

from llmcore.evaluate import char_f1

jieba.setLogLevel(logging.WARNING)  # the dictionary load message is noise on every start

K1, B = 1.5, 0.75
# Words that carry no FAQ meaning: particles, pronouns, question words, politeness, English function words.
# Negations (不 没 not no) and time/place question words (when where 多久 哪里) stay: they change the question.
STOPWORDS = frozenset(
    "的 了 吗 呢 啊 吧 呀 哦 嘛 么 是 我 你 您 他 她 它 我们 你们 请 请问 麻烦 一下 怎么 怎样 怎么样 如何 "
    "什么 啥 这个 那个 这 那 个 就 也 都 还 和 与 跟 "
    "a an the is are am was be been do does did i me my you your we our it its to of in on at for and or "
    "can could would will should please how what hi hello s t".split()  # s, t: the tails of "what's", "don't"
)


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


def normalize(text: str) -> str:
    """NFKC, lower case, letters and digits only: what an exact match compares."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def tokenize(text: str) -> list[str]:
    """Search tokens: jieba search-mode words of the NFKC lower-cased text, without punctuation, emoji and stopwords."""
    words = jieba.lcut_for_search(unicodedata.normalize("NFKC", text).lower(), HMM=False)
    return [w for w in words if any(ch.isalnum() for ch in w) and w not in STOPWORDS]


def bm25_idf(n_docs: int, n_with_term: int) -> float:
    return math.log(1 + (n_docs - n_with_term + 0.5) / (n_with_term + 0.5))


class FaqIndex:
    """BM25 over the questions of `entries`; match() gives each entry's best document."""

    def __init__(self, entries: list[FaqEntry]) -> None:
        self.entries = list(entries)
        self.doc_entry: list[int] = []  # document -> index of its entry
        self.doc_text: list[str] = []
        self.exact: dict[str, list[int]] = {}  # normalized text -> documents
        self.postings: dict[str, list[tuple[int, int]]] = {}  # term -> [(document, term frequency)]
        lengths: list[int] = []
        for e, entry in enumerate(self.entries):
            for text in (entry.question, *entry.similar):
                lengths.append(self._add_document(e, text))
        self.avgdl = sum(lengths) / len(lengths) if lengths else 1.0
        self.avgdl = self.avgdl or 1.0  # every document may be stopwords only
        self.doc_norm = [K1 * (1 - B + B * n / self.avgdl) for n in lengths]
        self.idf = {t: bm25_idf(len(lengths), len(p)) for t, p in self.postings.items()}
        self.unknown_idf = bm25_idf(len(lengths), 0)  # the largest idf: a word in no document

    def _add_document(self, entry_index: int, text: str) -> int:
        doc = len(self.doc_text)
        self.doc_entry.append(entry_index)
        self.doc_text.append(text)
        self.exact.setdefault(normalize(text), []).append(doc)
        terms = Counter(tokenize(text))
        for term, tf in terms.items():
            self.postings.setdefault(term, []).append((doc, tf))
        return sum(terms.values())

    def match(self, text: str, k: int = 3) -> list[Match]:
        """Up to k entries sharing a word with `text` (or equal to it), best first; ties go to the earlier entry."""
        key = normalize(text)
        exact = set(self.exact.get(key, ())) if key else set()
        scores = self._scores(Counter(tokenize(text)))
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

    def _scores(self, terms: Counter[str]) -> dict[int, float]:
        """Normalized BM25 of every document sharing a term with the query, clipped to [0, 1]."""
        own = self._self_score(terms)
        raw: dict[int, float] = {}
        for term, query_tf in terms.items():
            idf = self.idf.get(term)
            for doc, tf in self.postings.get(term, ()):
                tf = min(tf, query_tf)  # a word repeated in the document is no more evidence than the query holds
                raw[doc] = raw.get(doc, 0.0) + idf * tf * (K1 + 1) / (tf + self.doc_norm[doc])
        return {doc: min(1.0, score / own) for doc, score in raw.items()} if own > 0 else {}

    def _self_score(self, terms: Counter[str]) -> float:
        """BM25 of the query against itself as a document: the most it could score."""
        norm = K1 * (1 - B + B * sum(terms.values()) / self.avgdl)
        return sum(self.idf.get(t, self.unknown_idf) * tf * (K1 + 1) / (tf + norm) for t, tf in terms.items())
