"""Search without torch: jieba search tokens, Okapi BM25, and the evidence index a model version carries.

    index = EvidenceIndex.build(train_conversations)     # one document per assistant turn: the user turn before it
    hits = index.search(messages, k=2)                   # [Hit(response, score, question)], best first
    hits = index.search(messages, k=2, exclude_group=7)  # training: never a turn of conversation 7 itself
    baseline = hits[0].response                          # the BM25 nearest-response answer every version is compared with
    index.save(folder / "evidence.jsonl"); index = EvidenceIndex.load(folder / "evidence.jsonl")
    char_f1("满69元包邮", "满99元包邮")                    # the one answer metric: multiset F1 of non-space characters

Shared by the bot (the FAQ matcher in bot/search.py) and llmcore (retrieval-augmented prompts, evaluation),
so it imports neither torch nor anything of the bot.

BM25 departs from the textbook in one way: a document's term frequency counts at most the query's (a word
repeated in a document is no more evidence than the query holds). Scores are normalized by the score the
query gets against itself as a document, so they lie in [0, 1] and a threshold means the same for a short
and a long query; query words no document has weigh in that self-score with the largest idf there is.
"""
from __future__ import annotations

import json
import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jieba
import numpy as np

jieba.setLogLevel(logging.WARNING)  # the dictionary load message is noise on every start

K1, B = 1.5, 0.75
# Words that carry no meaning for matching: particles, pronouns, question words, politeness, English function words.
# Negations (不 没 not no) and time/place question words (when where 多久 哪里) stay: they change the question.
STOPWORDS = frozenset(
    "的 了 吗 呢 啊 吧 呀 哦 嘛 么 是 我 你 您 他 她 它 我们 你们 请 请问 麻烦 一下 怎么 怎样 怎么样 如何 "
    "什么 啥 这个 那个 这 那 个 就 也 都 还 和 与 跟 "
    "a an the is are am was be been do does did i me my you your we our it its to of in on at for and or "
    "can could would will should please how what hi hello s t".split()  # s, t: the tails of "what's", "don't"
)
EVIDENCE_FORMAT = "kefu-evidence/1"
CONTEXT_MESSAGES = 2  # messages before the question that say what it is about (the last answer, the question before)
CONTEXT_WEIGHT = 0.3  # how much matching context counts beside matching the question itself
MAX_QUERY_CHARS = 512  # a query's tail that is searched: a 30k-character message costs no more than a long question


def char_counts(text: str) -> Counter[str]:
    """The multiset of a text's non-space characters: what char_f1 compares."""
    return Counter(c for c in text if not c.isspace())


def char_f1(prediction: str, reference: str) -> float:
    """F1 of the multisets of non-space characters."""
    pred, ref = char_counts(prediction), char_counts(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def normalize(text: str) -> str:
    """NFKC, lower case, letters and digits only: what an exact match compares."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def tokenize(text: str) -> list[str]:
    """Search tokens: jieba search-mode words of the NFKC lower-cased text, without punctuation, emoji and stopwords."""
    words = jieba.lcut_for_search(unicodedata.normalize("NFKC", text).lower(), HMM=False)
    return [w for w in words if any(ch.isalnum() for ch in w) and w not in STOPWORDS]


def bm25_idf(n_docs: int, n_with_term: int) -> float:
    return math.log(1 + (n_docs - n_with_term + 0.5) / (n_with_term + 0.5))


class Bm25:
    """Normalized BM25 over documents given as token lists. Postings are numpy arrays: a query costs a few vector
    operations per query word, however many documents hold it (a common word may be in thousands)."""

    def __init__(self, documents: Iterable[Sequence[str]]) -> None:
        postings: dict[str, tuple[list[int], list[int]]] = {}  # term -> ([document], [term frequency])
        lengths: list[int] = []
        for doc, tokens in enumerate(documents):
            for term, tf in Counter(tokens).items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(doc)
                tfs.append(tf)
            lengths.append(len(tokens))
        self.postings = {t: (np.array(d, dtype=np.int64), np.array(f, dtype=np.int64)) for t, (d, f) in postings.items()}
        self.num_docs = len(lengths)
        self.avgdl = (sum(lengths) / len(lengths) if lengths else 1.0) or 1.0  # every document may be stopwords only
        self.doc_norm = np.array([K1 * (1 - B + B * n / self.avgdl) for n in lengths], dtype=np.float64)
        self.idf = {t: bm25_idf(self.num_docs, len(d)) for t, (d, _) in self.postings.items()}
        self.unknown_idf = bm25_idf(self.num_docs, 0)  # the largest idf: a word in no document

    def score_array(self, terms: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalized BM25 in [0, 1] of every document (num_docs,), and which documents share a term with the query."""
        scores, touched = np.zeros(self.num_docs), np.zeros(self.num_docs, dtype=bool)
        own = self.self_score(terms)
        if own <= 0:
            return scores, touched
        for term, query_tf in terms.items():
            if term not in self.postings:
                continue
            docs, tfs = self.postings[term]
            tf = np.minimum(tfs, query_tf)
            scores[docs] += self.idf[term] * tf * (K1 + 1) / (tf + self.doc_norm[docs])
            touched[docs] = True
        return np.minimum(1.0, scores / own), touched

    def scores(self, terms: Counter[str]) -> dict[int, float]:
        """Normalized BM25 in [0, 1] of every document sharing a term with the query."""
        scores, touched = self.score_array(terms)
        return {int(doc): float(scores[doc]) for doc in np.flatnonzero(touched)}

    def self_score(self, terms: Counter[str]) -> float:
        """BM25 of the query against itself as a document: the most it could score."""
        norm = K1 * (1 - B + B * sum(terms.values()) / self.avgdl)
        return sum(self.idf.get(t, self.unknown_idf) * tf * (K1 + 1) / (tf + norm) for t, tf in terms.items())


@dataclass(frozen=True)
class Hit:
    response: str
    score: float  # normalized BM25 of the query against `question`, in [0, 1]
    question: str


@dataclass(frozen=True)
class StoredTurn:
    question: str  # the user turn the response answered
    response: str
    group: int  # the conversation it came from: training never retrieves from the target's own conversation
    context: str = ""  # the CONTEXT_MESSAGES before the question: "its phone number?" is about what was said before


def split_query(messages: Sequence[dict]) -> tuple[str, str]:
    """The last user turn, and the CONTEXT_MESSAGES before it (each cut to MAX_QUERY_CHARS)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            context = " ".join(m["content"][-MAX_QUERY_CHARS:] for m in messages[max(0, i - CONTEXT_MESSAGES) : i])
            return messages[i]["content"][-MAX_QUERY_CHARS:], context
    return "", ""


class EvidenceIndex:
    """The stored responses of a version's training data, found by the user turn they answered."""

    def __init__(self, turns: Sequence[StoredTurn]) -> None:
        self.turns = list(turns)
        self.bm25 = Bm25(tokenize(t.question) for t in self.turns)
        self.context_bm25 = Bm25(tokenize(f"{t.context} {t.response}") for t in self.turns)  # what the exchange is about
        self.keys = [normalize(t.question) for t in self.turns]
        self.questions_of: dict[str, set[str]] = {}  # response -> the questions it answered
        for t in self.turns:
            self.questions_of.setdefault(t.response, set()).add(t.question)

    @classmethod
    def build(cls, conversations: Iterable) -> EvidenceIndex:
        """Every assistant turn that follows a user turn (but context-only ones, `"weight": 0`), from conversations
        with a `messages` list."""
        turns = []
        for group, conversation in enumerate(conversations):
            messages = conversation.messages
            turns += [StoredTurn(messages[i - 1]["content"], m["content"], group, split_query(messages[:i])[1])
                      for i, m in enumerate(messages)
                      if i > 0 and m["role"] == "assistant" and m.get("weight", 1) and messages[i - 1]["role"] == "user"]
        return cls(turns)

    def __len__(self) -> int:
        return len(self.turns)

    def is_stock(self, response: str, question: str) -> bool:
        """Is exactly this response stored for another question (an FAQ answer asked in other words, "不客气。")?"""
        return bool(self.questions_of.get(response, set()) - {question})

    def search(self, messages: Sequence[dict], k: int, exclude_group: int | None = None,
               exclude: tuple[str, str] | None = None) -> list[Hit]:
        """Up to k stored responses for the conversation's last user turn, best first, each response once.

        A stored turn scores by how well its question matches the user's, plus CONTEXT_WEIGHT times how well
        its context and response match the turns before the user's (scaled back into [0, 1]). `exclude_group`
        leaves out one conversation, `exclude` one (question, response) pair wherever it is stored (a copy of
        the target turn, e.g. an operator's answer repeated for weight, is the target itself).

        A stored turn whose question is the user's own (case, width and punctuation aside) is never evidence, in
        training or in serving alike: the model learned that answer by heart, and in training it never sees its
        target among the evidence — serving must not show it a situation training never did."""
        query, context = split_query(messages)
        if k <= 0 or not query:
            return []
        scores, touched = self.bm25.score_array(Counter(tokenize(query)))
        key = normalize(query)
        if context_terms := Counter(tokenize(context)):
            context_scores, context_touched = self.context_bm25.score_array(context_terms)
            scores = (scores + CONTEXT_WEIGHT * context_scores) / (1 + CONTEXT_WEIGHT)
            touched |= context_touched
        docs = np.flatnonzero(touched)
        hits: list[Hit] = []
        seen: set[str] = set()
        for doc in docs[np.lexsort((docs, -scores[docs]))].tolist():  # best first, ties by document order
            turn, score = self.turns[doc], float(scores[doc])
            if (turn.group == exclude_group or turn.response in seen or (turn.question, turn.response) == exclude
                    or self.keys[doc] == key):
                continue
            seen.add(turn.response)
            hits.append(Hit(turn.response, score, turn.question))
            if len(hits) == k:
                break
        return hits

    def save(self, path: str | Path) -> None:
        lines = [json.dumps({"format": EVIDENCE_FORMAT, "turns": len(self.turns)})]
        lines += [json.dumps({"q": t.question, "a": t.response, "g": t.group, "c": t.context}, ensure_ascii=False)
                  for t in self.turns]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> EvidenceIndex:
        with open(path, encoding="utf-8") as handle:
            header = json.loads(handle.readline())
            if header.get("format") != EVIDENCE_FORMAT:
                raise ValueError(f"{path} is not a {EVIDENCE_FORMAT} file")
            rows = [json.loads(line) for line in handle if line.strip()]
        return cls([StoredTurn(r["q"], r["a"], int(r["g"]), r.get("c", "")) for r in rows])
