"""The FAQ matcher: Okapi BM25 over every question and similar question, scores normalized to [0, 1], fused
with a sentence encoder's cosine when there is one (FAQ_ENCODER, bot/encoder.py).

    index = FaqIndex([FaqEntry("1", "怎么退货？", "七天内可以在订单页申请退货。", ("能退货吗",))])
    matches = index.match("请问怎么退货", k=3)   # [Match(entry, score=1.0, matched="怎么退货？")], best first
    tokenize("How do I return my order?")      # ["return", "order"]
    words("人工智能是什么")                     # ["人工智能", "是", "什么"]: whole words, no search-mode pieces

Each question and each similar question is a document. A query's BM25 score against a document is
divided by the score the query gets against itself as a document (same idf, same average length), so
a threshold means the same for a two-word and a twenty-word question. Query words the index has never
seen weigh in that self-score with the largest idf there is (a word in no document), so a question of
unknown words cannot score high on the one word it shares with the FAQ. A query equal to a document
once case, width, punctuation and spaces are ignored scores 1.0 and ranks before any other 1.0.

One departure from textbook BM25: a document's term frequency counts at most the query's. Otherwise
"今天股市怎么样" scores 0.47 against "今天买的今天能发出吗" (twice 今天) — more for one shared word than the
query gives itself — and the self-score would not bound documents as long as the query.

With an encoder, an entry's score is LEXICAL_WEIGHT × its BM25 score plus the rest × its best cosine mapped
linearly from the encoder's `cos_range` onto [0, 1]: still in [0, 1], so FAQ_BEST and FAQ_SUGGEST keep their
meaning. A paraphrase that shares no word with the stored question still scores on meaning, and a question
that shares a shop word with an entry but means something else is held down by its cosine. The blend was
chosen on half of the demo paraphrase and off-topic sets and checked on the other half (docs/benchmarks.md,
`bench/faq.py`); an exact match (case, width, punctuation aside) is 1.0 either way.

Built once per FAQ version (bot/faq.py; entry vectors are cached in Redis by text); the BM25 itself
(llmcore/retrieval.py, shared with the model's evidence search) precomputes term frequencies, document lengths
and an inverted index, so a query costs its jieba segmentation plus the postings of its words, and with an
encoder one sentence encoding (~1.5 ms with USE, ~17 ms with USE + e5 on 2 vCPU) and one matrix-vector product.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import jieba
import numpy as np

from bot.encoder import Encoder
from bot.texts import CJK, LATIN_WORD
from llmcore.retrieval import Bm25, char_f1, normalize, tokenize

__all__ = ["FaqEntry", "FaqIndex", "Match", "documents", "normalize", "tokenize", "words"]


@dataclass(frozen=True)
class FaqEntry:
    id: str
    question: str
    answer: str
    similar: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    entry: FaqEntry
    score: float  # in [0, 1]: the fused score (BM25 alone without an encoder)
    matched: str  # the question or similar question that scored best
    lexical: float = 0.0  # BM25, in [0, 1]
    semantic: float | None = None  # best cosine; None without an encoder


LEXICAL_WEIGHT = 0.3
MAX_ENCODED_CHARS = 64  # the encoder reads a question's first 64 characters (e5 costs ~0.85 ms a character); BM25 all
OTHER_LANGUAGE = 0.85  # an entry asked in the other language (Chinese vs English) scores this much of its fused score


def words(text: str) -> list[str]:
    """Whole jieba words (precise mode) of the NFKC lower-cased text, without spaces and punctuation. Search tokens
    (`tokenize`) also hold the pieces of a long word, 人工 and 智能 of 人工智能: right for matching, wrong for spotting a word."""
    return [w for w in jieba.lcut(unicodedata.normalize("NFKC", text).lower(), HMM=False) if any(ch.isalnum() for ch in w)]


def script(text: str) -> str | None:
    """"zh" for Chinese characters without Latin words, "en" for Latin words without Chinese, None for both ("请问
    iPhone 有货吗") or neither (digits, emoji): the language an answer should be in, when the text makes it clear."""
    chinese, latin = CJK.search(text) is not None, LATIN_WORD.search(text) is not None
    return None if chinese == latin else "zh" if chinese else "en"


def documents(entries: Sequence[FaqEntry]) -> list[str]:
    """Every question and similar question, in index order: what the index searches (and what vectors are made of)."""
    return [text for entry in entries for text in (entry.question, *entry.similar)]


class FaqIndex:
    """BM25 (and, with an encoder, cosine) over the questions of `entries`; match() gives each entry's best document."""

    def __init__(self, entries: list[FaqEntry], encoder: Encoder | None = None, vectors: np.ndarray | None = None) -> None:
        self.entries = list(entries)
        self.doc_entry: list[int] = []  # document -> index of its entry
        self.doc_text: list[str] = documents(self.entries)
        self.exact: dict[str, list[int]] = {}  # normalized text -> documents
        starts = []
        for e, entry in enumerate(self.entries):
            starts.append(len(self.doc_entry))
            for _ in (entry.question, *entry.similar):
                doc = len(self.doc_entry)
                self.doc_entry.append(e)
                self.exact.setdefault(normalize(self.doc_text[doc]), []).append(doc)
        self.bm25 = Bm25(tokenize(text) for text in self.doc_text)
        self.starts = np.array(starts, dtype=np.intp)  # each entry's documents: starts[e] .. ends[e]
        self.ends = np.append(self.starts[1:], len(self.doc_entry))
        self.language = [script(entry.question) for entry in self.entries]
        self.encoder = encoder
        self.vectors = None
        if encoder is not None:
            self.vectors = vectors if vectors is not None else encoder.encode(self.doc_text)
            if self.vectors.shape[0] != len(self.doc_text):
                raise ValueError(f"{self.vectors.shape[0]} vectors for {len(self.doc_text)} questions")

    def match(self, text: str, k: int = 3) -> list[Match]:
        """Up to k entries that share a word with `text`, mean about the same, or equal it; best first; ties go to the
        earlier entry."""
        key = normalize(text)
        exact = set(self.exact.get(key, ())) if key else set()
        lexical = self.bm25.scores(Counter(tokenize(text)))
        lexical.update(dict.fromkeys(exact, 1.0))
        cosine = None if exact else self._cosines(text)  # a stored question itself: 1.0 whatever the encoder says
        best: dict[int, tuple[float, bool, int]] = {}  # entry -> (lexical, exact, -document): the larger, the better
        for doc, score in lexical.items():
            entry, candidate = self.doc_entry[doc], (score, doc in exact, -doc)
            if score > 0 and (entry not in best or candidate > best[entry]):
                best[entry] = candidate
        per_entry = None if cosine is None else np.maximum.reduceat(cosine, self.starts)  # each entry's best cosine
        semantic = None if per_entry is None else self.cosine_score(per_entry)
        asked_in = script(text)
        ranked = []  # (-score, not exact, entry): scores first, Match objects for the k kept only
        for entry in set(best) | self._nearest(per_entry, k):
            lex, is_exact, _ = best.get(entry, (0.0, False, 0))
            fused = lex if semantic is None else LEXICAL_WEIGHT * lex + (1 - LEXICAL_WEIGHT) * float(semantic[entry])
            if asked_in and self.language[entry] and asked_in != self.language[entry]:
                fused *= OTHER_LANGUAGE  # a multilingual encoder matches across languages; the customer wants theirs
            ranked.append((-(1.0 if is_exact else fused), not is_exact, entry))
        ranked.sort()
        return [self._match(entry, -neg_score, best, cosine, per_entry) for neg_score, _, entry in ranked[: max(k, 0)] if neg_score < 0]

    def _match(self, entry: int, score: float, best: dict, cosine: np.ndarray | None, per_entry: np.ndarray | None) -> Match:
        """The Match of one ranked entry: the question that matched it best (by words if any, else by meaning)."""
        lex, _, neg_doc = best.get(entry, (0.0, False, 0))
        if per_entry is None:
            return Match(self.entries[entry], float(score), self.doc_text[-neg_doc], float(lex), None)
        start = self.starts[entry]
        doc = -neg_doc if entry in best else start + int(np.argmax(cosine[start : self.ends[entry]]))
        return Match(self.entries[entry], float(score), self.doc_text[doc], float(lex), float(per_entry[entry]))

    def _nearest(self, per_entry: np.ndarray | None, k: int) -> set[int]:
        """The k entries of highest cosine above the encoder's floor. An entry that shares no word with the question
        scores by its cosine alone, so the fused top k are among these and the entries BM25 found: the rest of a
        large FAQ need not be scored."""
        if per_entry is None or k <= 0:
            return set()
        nearest = np.argpartition(-per_entry, k - 1)[:k] if k < len(per_entry) else np.arange(len(per_entry))
        return {int(e) for e in nearest if per_entry[e] > self.encoder.cos_range[0]}

    def cosine_score(self, cosine: float | np.ndarray) -> float | np.ndarray:
        """Cosines mapped linearly from the encoder's range onto [0, 1]: the encoder's part of an entry's score."""
        floor, ceil = self.encoder.cos_range if self.encoder is not None else (0.0, 1.0)
        return np.clip((cosine - floor) / (ceil - floor), 0.0, 1.0)

    def _cosines(self, text: str) -> np.ndarray | None:
        if self.encoder is None or self.vectors is None or not len(self.vectors) or not text.strip():
            return None
        return self.vectors @ self.encoder.encode([text.strip()[:MAX_ENCODED_CHARS]])[0]

    def nearest_answer(self, text: str) -> tuple[FaqEntry | None, float]:
        """The entry whose answer is most like `text` (character F1), and how alike: is a model answer a stock one?"""
        best, similarity = None, 0.0
        for entry in self.entries:
            value = char_f1(text, entry.answer)
            if value > similarity:
                best, similarity = entry, value
        return best, similarity


