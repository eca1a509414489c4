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

With an encoder every entry is scored by its features: its BM25 score, the encoder's best cosine to its questions,
how far the mean of the five nearest falls below it (an entry one of whose wordings is near by chance, the others
far, ranks lower than one whose wordings agree) and its cosine to its answer (each part of a joint encoder apart),
and whether it is asked in the other language (Chinese vs English: a multilingual encoder matches across languages,
the customer wants theirs). A weighted sum ranks the entries; a confidence over that rank, its margin to the best
other entry and the share of the question's words that the FAQ never uses (`unknown_share`: "怎么退出微信群" is near the
login entry by meaning, but 群 is in no question or answer of the shop's) makes the score, in [0, 1]: how likely the
entry is the right one, so FAQ_BEST and FAQ_SUGGEST keep their meaning. A paraphrase that shares no word with the
stored question still scores on meaning, and on the words of the answer it asks for. The weights are the encoder's
`Fusion` (bot/encoder.py), fitted with `bench/faq.py --fit` on the demo paraphrase and off-topic sets
(docs/benchmarks.md); an exact match (case, width, punctuation aside) is 1.0 either way.

Built once per FAQ version (bot/faq.py; entry vectors are cached in Redis by text); the BM25 itself
(llmcore/retrieval.py, shared with the model's evidence search) precomputes term frequencies, document lengths
and an inverted index, so a query costs its jieba segmentation plus the postings of its words, and with an
encoder one sentence encoding (~1.5 ms with USE; ~15-30 ms more with e5 when USE is unsure, CASCADE) and a few
matrix-vector products.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass

import jieba
import numpy as np

from bot.encoder import Encoder, Fusion, query_vector
from bot.texts import CJK, LATIN_WORD
from llmcore.retrieval import Bm25, char_counts, normalize, tokenize

__all__ = ["FaqEntry", "FaqIndex", "Match", "answer_texts", "documents", "normalize", "question_texts", "tokenize", "unknown_share",
           "words"]


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
    semantic: float | None = None  # best cosine to the entry's questions (the mean of the encoder's parts); None without
    answer_cosine: float | None = None  # cosine to the entry's answer; None without an encoder
    unknown: float | None = None  # the share of the question's words the FAQ never uses (unknown_share); None without
    encoder: str | None = None  # the encoder whose fusion made the score ("use" when it decided alone: CASCADE); None without


MAX_ENCODED_CHARS = 64  # the encoder reads a question's first 64 characters (e5 costs ~0.85 ms a character); BM25 all
MAX_ENCODED_ANSWER_CHARS = 128  # and an answer's first 128 (once per FAQ change)
MAX_ENCODED_QUESTION_CHARS = 256  # and a stored question's first 256 (once per FAQ change; the demo FAQ's longest has 113)
MAX_FUSED = 0.999  # 1.0 is an exact match's alone
# With a joint encoder (use+e5) the first part (USE, ~1.5 ms) scores the question alone first, with its own fusion; e5
# (~15-30 ms) is asked only when that first score lies between these two: a question USE is sure of, or sure no entry
# answers, is decided without it. On the demo FAQ's 218 test questions, both fusions fitted on the other half: USE
# decides 57 % of them alone, 8 of 872 decisions differ from the pair's (mostly an answer where the pair offers the same
# entry as a button) and no more of them are wrong (docs/benchmarks.md; (0.02, 0.95) before: 42 %, 2 differ).
CASCADE = (0.1, 0.9)
# A FAQ of this many words (the demo FAQ has ~2,100) mentions most of its domain: a word it lacks says the question is
# about something else. A smaller one mentions less: "寄快递要钱吗" uses no word of a three-entry FAQ whose "运费多少钱？"
# it means. How much the unknown share says grows with the vocabulary up to this size (Fusion, bot/encoder.py).
FULL_VOCABULARY = 2000
# An entry's spread (Fusion.question_spread) reads its five nearest wordings: all of them in the demo FAQ (3-5 an entry,
# as fitted), and an entry that learns many customers' wordings (bot/paraphrases.py) must not rank lower for having
# more of them (the three nearest, tried: top-1 0.909 against 0.916 for all five, random halves)
NEAREST_WORDINGS = 5
VOCABULARY_ANSWER_CHARS = 512  # of an answer, its first 512 characters give words (jieba: ~2 µs a character, and a
# FAQ of thousands of 8,000-character policies is segmented again at every change)


def words(text: str) -> list[str]:
    """Whole jieba words (precise mode) of the NFKC lower-cased text, without spaces and punctuation. Search tokens
    (`tokenize`) also hold the pieces of a long word, 人工 and 智能 of 人工智能: right for matching, wrong for spotting a word."""
    return [w for w in jieba.lcut(unicodedata.normalize("NFKC", text).lower(), HMM=False) if any(ch.isalnum() for ch in w)]


# English words that say little (jieba's dictionary is Chinese: it weighs every English word as the rarest)
ENGLISH_FUNCTION_WORDS = frozenset("""
a about after all also am an and any are as at be been before being but by can could d did didn do does doesn doing
don for from had has have having he her here hi his how i if in into is isn it its just ll m may me might must my no
not of off on or our out over please re s shall she should so some t than that the their them then there these they
this those to too up us ve very was wasn we were what when where which who whom whose why will with won would yes you
your""".split())


def rarity(word: str) -> float:
    """How much a word says: log(total / frequency) in jieba's dictionary (的 5.2, 怎么 7.7, 退款 14.7); a word it lacks
    (vlookup; 淘宝 is there) as much as the rarest, an English function word as much as 的."""
    jieba.dt.check_initialized()  # the dictionary is read on first use
    if word in ENGLISH_FUNCTION_WORDS:
        word = "的"
    frequency = jieba.dt.FREQ.get(word, 0)  # prefixes of dictionary words are there with 0
    return math.log(jieba.dt.total / frequency) if frequency else math.log(jieba.dt.total)


def unknown_share(text: str, vocabulary: Set[str]) -> float:
    """The share of `text`'s words (whole words, `words`) that are not in `vocabulary`, each weighed by its rarity: 0
    when the FAQ uses every word of the question, near 1 when it uses none but 的 and 怎么. Off-topic questions that
    share a few words with the shop ("股票退市了，我买股票的钱怎么退") are about something no entry mentions."""
    found = words(text)
    weights = [rarity(word) for word in found]
    total = sum(weights)
    return sum(w for word, w in zip(found, weights) if word not in vocabulary) / total if total else 0.0


def script(text: str) -> str | None:
    """"zh" for Chinese characters without Latin words, "en" for Latin words without Chinese, None for both ("请问
    iPhone 有货吗") or neither (digits, emoji): the language an answer should be in, when the text makes it clear."""
    chinese, latin = CJK.search(text) is not None, LATIN_WORD.search(text) is not None
    return None if chinese == latin else "zh" if chinese else "en"


def documents(entries: Sequence[FaqEntry]) -> list[str]:
    """Every question and similar question, in index order: what the index searches (and what vectors are made of)."""
    return [text for entry in entries for text in (entry.question, *entry.similar)]


def question_texts(entries: Sequence[FaqEntry]) -> list[str]:
    """What the encoder reads of each question and similar question, in index order: the first
    MAX_ENCODED_QUESTION_CHARS (a question of 3,000 characters took e5 seconds at every FAQ change, and held up the
    build that the next answers waited for)."""
    return [text.strip()[:MAX_ENCODED_QUESTION_CHARS] for text in documents(entries)]


def answer_texts(entries: Sequence[FaqEntry]) -> list[str]:
    """What the encoder reads of each entry's answer, in index order."""
    return [entry.answer.strip()[:MAX_ENCODED_ANSWER_CHARS] for entry in entries]


class FaqIndex:
    """BM25 (and, with an encoder, cosine) over the questions of `entries`; match() gives each entry's best document."""

    def __init__(self, entries: list[FaqEntry], encoder: Encoder | None = None, vectors: np.ndarray | None = None,
                 answer_vectors: np.ndarray | None = None) -> None:
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
        counts = self.ends - self.starts
        self.nearest_count = np.minimum(counts, NEAREST_WORDINGS)  # wordings the spread reads per entry
        # entries with more wordings than that: their documents in rows (padded with a copy of the first, masked), so a
        # question sorts only those rows, not every document
        self.crowded = np.flatnonzero(counts > NEAREST_WORDINGS)
        width = int(counts[self.crowded].max()) if len(self.crowded) else 0
        offsets = np.arange(width)
        self.crowded_mask = offsets < counts[self.crowded, None]  # (C, W)
        self.crowded_docs = np.where(self.crowded_mask, self.starts[self.crowded, None] + offsets, self.starts[self.crowded, None])
        asked = [script(entry.question) for entry in self.entries]
        self.other_language = {lang: np.array([other not in (None, lang) for other in asked], dtype=float) for lang in ("zh", "en")}
        self.encoder = encoder
        self.parts: list[tuple[slice, np.ndarray, np.ndarray]] = []  # per encoder part: its span, question and answer vectors
        self.vocabulary: frozenset[str] = frozenset()  # every word of the questions and answers (unknown_share)
        self.vocabulary_weight = 0.0  # how much an unknown word says
        self.part_encoders: list[Encoder] | None = None
        self._postings: tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray] | None = None  # nearest_answer
        if encoder is not None:
            answers = (entry.answer[:VOCABULARY_ANSWER_CHARS] for entry in self.entries)
            self.vocabulary = frozenset(w for text in (*self.doc_text, *answers) for w in words(text))
            self.vocabulary_weight = min(1.0, len(self.vocabulary) / FULL_VOCABULARY)
            vectors = vectors if vectors is not None else encoder.encode(question_texts(self.entries))
            answer_vectors = answer_vectors if answer_vectors is not None else encoder.encode_answers(answer_texts(self.entries))
            if vectors.shape[0] != len(self.doc_text) or answer_vectors.shape[0] != len(self.entries):
                raise ValueError(f"{vectors.shape[0]} vectors for {len(self.doc_text)} questions, "
                                 f"{answer_vectors.shape[0]} for {len(self.entries)} answers")
            # a joint vector is its parts, each scaled by 1/√n: each part's unit vectors apart, in contiguous rows (kept
            # instead of the joined vectors, not beside them)
            bounds, n = np.cumsum((0, *encoder.dims)), len(encoder.dims)
            spans = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(n)]
            self.parts = [(span, np.ascontiguousarray(vectors[:, span] * np.sqrt(n)),
                           np.ascontiguousarray(answer_vectors[:, span] * np.sqrt(n))) for span in spans]
            parts = getattr(encoder, "parts", None)  # a JointEncoder's own encoders: each question vector made apart
            self.part_encoders = list(parts) if parts is not None and len(parts) == n else None

    def match(self, text: str, k: int = 3) -> list[Match]:
        """Up to k entries, best first (ties go to the earlier entry): without an encoder those that share a word with
        `text`; with one, every entry has a score (how likely it is the right one) and the k best are returned."""
        exact, best = self.lexical(text)
        if exact or self.encoder is None or not text.strip() or not self.entries:  # a stored question: 1.0, no encoding
            ranked = sorted((-(1.0 if is_exact else lex), not is_exact, entry) for entry, (lex, is_exact, _) in best.items())
            return [self._match(entry, -neg, best) for neg, _, entry in ranked[: max(k, 0)]]
        unknown = unknown_share(text, self.vocabulary)
        decided = None
        if self.part_encoders is not None and len(self.part_encoders) > 1:  # the first part alone first (CASCADE)
            first = self.part_encoders[0]
            features, query = self.features(text, best, parts=1)
            scores = self.scores(features, unknown, first.fusion)
            decided = first.name if not CASCADE[0] <= float(scores.max()) < CASCADE[1] else None
        if decided is None:
            features, query = self.features(text, best)
            scores = self.scores(features, unknown)
        order = np.argsort(-scores, kind="stable")[: max(k, 0)]  # stable: ties go to the earlier entry
        return [self._match(e, float(scores[e]), best, features[e], query, unknown, decided or self.encoder.name) for e in order]

    @property
    def vectors(self) -> np.ndarray | None:
        """The questions' vectors as the encoder made them (joined again from the parts)."""
        return np.concatenate([q / np.sqrt(len(self.parts)) for _, q, _ in self.parts], axis=1) if self.parts else None

    def query_parts(self, text: str, parts: int | None = None) -> list[np.ndarray]:
        """The question's unit vector by each of the encoder's first `parts` parts (all: None), each remembered
        (`query_vector`): a question scored by USE alone first is not encoded by USE again when e5 is asked."""
        clipped, n = text.strip()[:MAX_ENCODED_CHARS], len(self.parts)
        if self.part_encoders is not None:
            return [query_vector(part, clipped) for part in self.part_encoders[:parts]]
        joint = query_vector(self.encoder, clipped)
        return [joint[span] * np.float32(np.sqrt(n)) for span, _, _ in self.parts[:parts]]

    def lexical(self, text: str) -> tuple[bool, dict[int, tuple[float, bool, int]]]:
        """Whether `text` is a stored question (case, width, punctuation aside), and each entry's best document by BM25:
        entry -> (score, exact, -document), the larger the better."""
        key = normalize(text)
        exact = set(self.exact.get(key, ())) if key else set()
        lexical = self.bm25.scores(Counter(tokenize(text)))
        lexical.update(dict.fromkeys(exact, 1.0))
        best: dict[int, tuple[float, bool, int]] = {}
        for doc, score in lexical.items():
            entry, candidate = self.doc_entry[doc], (score, doc in exact, -doc)
            if score > 0 and (entry not in best or candidate > best[entry]):
                best[entry] = candidate
        return bool(exact), best

    def features(self, text: str, best: dict[int, tuple[float, bool, int]] | None = None,
                 parts: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Each entry's features, in the order of the encoder's Fusion: BM25 (`best`: lexical()'s), each encoder part's
        best cosine to the entry's questions, each part's cosine to its answer, 1 for an entry asked in the other
        language, each part's mean cosine to the entry's NEAREST_WORDINGS nearest questions less the best (0 for an
        entry of one wording); and the question's vector by each part. `parts`: the first that many parts only (the
        first part's own Fusion reads those)."""
        best = self.lexical(text)[1] if best is None else best
        query = self.query_parts(text, parts)
        lex = np.zeros(len(self.entries))
        for entry, (score, _, _) in best.items():
            lex[entry] = score
        cosines = [vectors @ q for (_, vectors, _), q in zip(self.parts, query)]
        questions = [np.maximum.reduceat(c, self.starts) for c in cosines]
        spreads = [self._nearest_mean(c) - best_cosine for c, best_cosine in zip(cosines, questions)]
        answers = [vectors @ q for (_, _, vectors), q in zip(self.parts, query)]
        asked_in = script(text)
        other = self.other_language[asked_in] if asked_in else np.zeros(len(self.entries))
        return np.column_stack([lex, *questions, *answers, other, *spreads]), query

    def _nearest_mean(self, cosines: np.ndarray) -> np.ndarray:
        """Each entry's mean cosine over its NEAREST_WORDINGS nearest wordings (all of them when it has fewer)."""
        sums = np.add.reduceat(cosines, self.starts)
        if len(self.crowded):
            rows = np.where(self.crowded_mask, cosines[self.crowded_docs], -np.inf)  # (C, W)
            sums[self.crowded] = -np.partition(-rows, NEAREST_WORDINGS - 1, axis=1)[:, :NEAREST_WORDINGS].sum(1)
        return sums / self.nearest_count

    def scores(self, features: np.ndarray, unknown: float, fusion: Fusion | None = None) -> np.ndarray:
        """Each entry's score in [0, 1) from its features and the question's unknown share: the Fusion's rank, and its
        confidence over the rank, the margin to the best other entry and the unknown share (bot/encoder.py, Fusion),
        the last weighed by how much the FAQ's vocabulary says (FULL_VOCABULARY). `fusion`: the encoder's by default."""
        fusion = fusion or self.encoder.fusion
        rank = features @ fusion.weights()
        first = int(np.argmax(rank))
        rivals = np.full_like(rank, rank[first])
        rivals[first] = np.max(np.delete(rank, first)) if len(rank) > 1 else -np.inf
        margin = rank - np.maximum(rivals, fusion.rival_floor)
        a, b, c = fusion.confidence
        logit = a * rank + b * margin + c
        if fusion.informed_confidence is not None and self.vocabulary_weight > 0:
            a, b, c, d = fusion.informed_confidence
            logit = (1 - self.vocabulary_weight) * logit + self.vocabulary_weight * (a * rank + b * margin + c + d * unknown)
        logit = np.clip(logit, -60.0, 60.0)  # exp stays finite
        scores = 1.0 / (1.0 + np.exp(-logit))
        return np.minimum(scores, MAX_FUSED)

    def _match(self, entry: int, score: float, best: dict, features: np.ndarray | None = None,
               query: list[np.ndarray] | None = None, unknown: float | None = None, encoder: str | None = None) -> Match:
        """The Match of one ranked entry: the question that matched it best (by words if any, else by meaning)."""
        lex, _, neg_doc = best.get(entry, (0.0, False, 0))
        if features is None or query is None:
            return Match(self.entries[entry], float(score), self.doc_text[-neg_doc], float(lex), None)
        start, end = self.starts[entry], self.ends[entry]
        doc = -neg_doc if entry in best else start + int(np.argmax(sum(v[start:end] @ q for (_, v, _), q in zip(self.parts, query))))
        parts = len(query)
        return Match(self.entries[entry], float(score), self.doc_text[doc], float(lex), float(np.mean(features[1 : 1 + parts])),
                     float(np.mean(features[1 + parts : 1 + 2 * parts])), unknown, encoder)

    def nearest_answer(self, text: str) -> tuple[FaqEntry | None, float]:
        """The entry whose answer is most like `text` (character F1, `char_f1`), and how alike: is a model answer a stock
        one, an operator's answer one the FAQ has? Over every answer at once, by the postings of `text`'s characters (a
        pair at a time, the console's list of operators' answers the FAQ lacks took 25 s for 2,000 answers)."""
        postings, sizes = self._answer_postings()
        counts = char_counts(text)
        overlap = np.zeros(len(self.entries))
        for char, n in counts.items():
            if char in postings:
                rows, found = postings[char]
                overlap[rows] += np.minimum(found, n)
        if not counts or not overlap.any():
            return None, 0.0
        f1 = 2 * overlap / (sum(counts.values()) + sizes)
        best = int(np.argmax(f1))  # ties: the earlier entry
        return self.entries[best], float(f1[best])

    def _answer_postings(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Per character, the entries whose answer has it and how often; each answer's size (made on first use)."""
        if self._postings is None:
            lists: dict[str, tuple[list[int], list[int]]] = {}
            sizes = np.zeros(len(self.entries))
            for e, entry in enumerate(self.entries):
                counts = char_counts(entry.answer)
                sizes[e] = sum(counts.values())
                for char, n in counts.items():
                    rows, found = lists.setdefault(char, ([], []))
                    rows.append(e)
                    found.append(n)
            self._postings = ({char: (np.array(rows), np.array(found)) for char, (rows, found) in lists.items()}, sizes)
        return self._postings


