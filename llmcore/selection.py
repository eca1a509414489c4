"""Choosing the answer among candidates: minimum-Bayes-risk selection with char-F1 as the utility.

    selection = Selection(retrieved=24, greedy_weight=3, variants=4)  # the version's setting (select.json beside the weights)
    params = selection.candidate_params(greedy_params)    # the greedy request, then `samples` seeded draws
    evidence = selection.variant_evidence(recipe, request_evidence, hits)  # each variant's evidence: the next stored answers
    choice = selection.choose(generated, hits, vouched, variants=4)  # generated: [(text, confidence)]: greedy, draws,
                                                          # variants; hits: retrieved answers; vouched: the request's own
                                                          # evidence (FAQ answers)
    choice.text, choice.confidence, choice.source, choice.consensus

A small model's greedy answer is one guess; the stored answers nearest the question (and sampled answers, for a
version that asks for them) are others. The candidate that agrees most with all the others (the highest mean
char-F1 to them: char-F1 is what answers are judged by) is the one expected to score best: a stray invention
that nothing else supports loses to the formula the near stored answers share. The greedy answer is the only
candidate that read this conversation, so its vote counts `greedy_weight` times a stored answer's; so does each piece
of evidence the request brings (the bot sends the FAQ answers that matched the question by meaning, which the
version's word search may miss: on the demo paraphrases 80 -> ~100 of 165 right, docs/benchmarks.md). Measured in
docs/benchmarks.md (greedy + 8 retrieved: +0.19 to +0.26 char-F1 on under-trained models; on a model of the default
recipe, greedy x 3 + 24 retrieved +0.023 where greedy + 8 gave -0.003; samples did not help).

Variants are more greedy answers to the same conversation, each prompted with the next stored answers as its evidence
(not for a request that brings evidence of its own): a sampled answer is a noisier guess than the greedy one, but a variant
is as good a guess written from other material, and it read this conversation too, so it votes as the greedy answer
does. On held-out dialogues 4 variants took a Transformer's chosen answers from 0.476 to 0.496 char-F1, and cost an
LSTM's 0.05: the trainer keeps them in a version's select.json only where they win on its validation turns
(docs/benchmarks.md).

The draws are seeded (SAMPLE_SEED + i), so a request at temperature 0 still gets the same answer every time,
alone or in any batch. A retrieved answer carries no log-probability of its own: its confidence is the greedy
answer's (the model's certainty about this question), the same in `llmcore eval`, in training (the gate is
fitted on chosen answers) and in serving.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmcore.prompting import PromptRecipe
from llmcore.retrieval import EvidenceIndex, Hit

if TYPE_CHECKING:  # torch stays out of the CLI's argument parser, which shows DEFAULT_SELECTION
    from llmcore.sampling import SamplingParams

SELECT_FILE = "select.json"
SAMPLE_SEED = 1000
MAX_SAMPLES = 16
MAX_RETRIEVED = 32
MAX_GREEDY_WEIGHT = 16.0
MAX_VARIANTS = 8
MBR_CHARS = 1024  # what mbr_choice reads of each text


@dataclass(frozen=True)
class Choice:
    text: str
    confidence: float | None  # mean log-probability of the chosen answer (a stored one: the greedy answer's)
    source: str  # "greedy" | "sample" | "variant" | "evidence" (the request's own) | "retrieved"
    index: int  # among generated (greedy first, the draws, the variants), the request's evidence, or the retrieved hits
    consensus: float  # its mean char-F1 to the other candidates


@dataclass(frozen=True)
class Selection:
    samples: int = 0  # sampled answers beside the greedy one (0 and retrieved 0: the greedy answer, no selection)
    retrieved: int = 0  # stored answers nearest the question that join the candidates
    temperature: float = 0.8  # of the draws
    greedy_weight: float = 1.0  # the greedy answer's vote, in stored answers' votes (1: every candidate alike, as before)
    variants: int = 0  # greedy answers prompted with the next stored answers as evidence (they vote as the greedy one)

    def __post_init__(self) -> None:
        if not (0 <= self.samples <= MAX_SAMPLES and 0 <= self.retrieved <= MAX_RETRIEVED and self.temperature > 0
                and 1.0 <= self.greedy_weight <= MAX_GREEDY_WEIGHT and 0 <= self.variants <= MAX_VARIANTS):
            raise ValueError(f"selection needs 0..{MAX_SAMPLES} samples, 0..{MAX_RETRIEVED} retrieved, temperature > 0, "
                             f"a greedy weight of 1..{MAX_GREEDY_WEIGHT:g} and 0..{MAX_VARIANTS} variants")

    @property
    def enabled(self) -> bool:
        return self.samples > 0 or self.retrieved > 0 or self.variants > 0

    def candidate_params(self, params: SamplingParams) -> list[SamplingParams]:
        """The request's own (greedy) parameters first, then one seeded draw per sample."""
        return [params] + [replace(params, temperature=self.temperature, seed=SAMPLE_SEED + i) for i in range(self.samples)]

    def retrieve(self, index: EvidenceIndex | None, messages: Sequence[dict], evidence_k: int = 0) -> list[Hit]:
        """The stored answers that join the candidates: the version's index searched as for its evidence; with
        variants, at least as many as their prompts take (`evidence_k` each, the recipe's, and the greedy answer's)."""
        wanted = max(self.retrieved, evidence_k * (1 + self.variants) if self.variants else 0)
        return index.search(messages, wanted) if index is not None and wanted else []

    def variant_evidence(self, recipe: PromptRecipe, request_evidence: Sequence[str], hits: Sequence[Hit]) -> list[list[Hit]]:
        """Each variant's evidence: the stored answers (`hits`, best first) that come after those the greedy answer's
        prompt took, the next ones for each variant. None for a request that brings evidence of its own (the bot's FAQ
        answers): the caller knows best, and variants written beside it outvoted it (bench/demo_kb.py: 39 -> 35 of the
        demo paraphrases answered right); none either without more stored answers or evidence in the prompts."""
        room = recipe.evidence_k
        if any(text.strip() for text in request_evidence) or room <= 0 or not self.variants:
            return []
        return [list(hits[i * room : (i + 1) * room]) for i in range(1, self.variants + 1) if hits[i * room : (i + 1) * room]]

    def choose(self, generated: Sequence[tuple[str, float | None]], hits: Sequence[Hit],
               vouched: Sequence[str] = (), variants: int = 0) -> Choice:
        """The candidate with the highest weighted mean char-F1 to the others; ties go to the earlier one (greedy first).
        `generated`: the greedy answer, the draws, and last `variants` variants (which vote as the greedy one does).
        `vouched`: answers the request brought as its own evidence (the bot's FAQ answers for this question): they join
        the candidates with the greedy answer's vote, the caller's word counting as much as the model's."""
        stored = [h.response for h in hits[: self.retrieved]]
        texts = [text for text, _ in generated] + list(vouched) + stored
        drawn = len(generated) - 1 - variants
        weights = ([self.greedy_weight] + [1.0] * drawn + [self.greedy_weight] * variants
                   + [self.greedy_weight] * len(vouched) + [1.0] * len(stored))
        best, consensus = mbr_choice(texts, weights)
        greedy_confidence = generated[0][1]
        if best < len(generated):
            source = "greedy" if best == 0 else "sample" if best <= drawn else "variant"
            return Choice(texts[best], generated[best][1], source, best, consensus)
        if best < len(generated) + len(vouched):
            return Choice(texts[best], greedy_confidence, "evidence", best - len(generated), consensus)
        return Choice(texts[best], greedy_confidence, "retrieved", best - len(generated) - len(vouched), consensus)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: Path) -> None:
        (folder / SELECT_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Selection:
        """The version's setting; a version without one answers greedily, as before selection."""
        path = folder / SELECT_FILE
        if not path.exists():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


GREEDY = Selection()  # the greedy answer alone: versions trained before selection
# what `llmcore train` gives a new version: chosen on the trainer's validation turns, checked on held-out ones
# (docs/benchmarks.md)
DEFAULT_SELECTION = Selection(samples=0, retrieved=24, greedy_weight=3.0, variants=4)


def mbr_choice(texts: Sequence[str], weights: Sequence[float] | None = None) -> tuple[int, float]:
    """Minimum-Bayes-risk choice: the index of the text with the highest weighted mean char-F1 to the other texts
    (each text's vote counts its weight; all 1 by default), and that mean. One text: itself, with consensus 1.

    The texts' character counts as one matrix, each pair's overlap the sum of the smaller counts, a row against all
    at a time (25 candidates: ~0.2 ms, on the server's event loop; pair by pair in Python it took ~1.2 ms). A text
    is judged by its first MBR_CHARS characters: answers and stored answers are far shorter, and a request's own
    evidence may be 32,768 characters of distinct ones, whose every-pair matrix took seconds and hundreds of MB."""
    if len(texts) <= 1:
        return 0, 1.0
    w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=np.float64)
    columns: dict[str, int] = {}
    counted = [Counter(columns.setdefault(ch, len(columns)) for ch in text[:MBR_CHARS] if not ch.isspace()) for text in texts]
    counts = np.zeros((len(texts), max(len(columns), 1)), dtype=np.int32)
    for row, counter in enumerate(counted):
        counts[row, list(counter)] = list(counter.values())
    sizes = counts.sum(1)
    overlap = np.stack([np.minimum(row, counts).sum(-1) for row in counts])
    total = sizes[:, None] + sizes[None, :]
    f1 = np.where(total > 0, 2 * overlap / np.maximum(total, 1), 1.0)  # two empty texts agree (char_f1's rule)
    np.fill_diagonal(f1, 0.0)
    scores = (f1 @ w) / (w.sum() - w)
    best = max(range(len(texts)), key=lambda i: (round(float(scores[i]), 12), -i))  # a tie (to rounding) goes first
    return best, float(scores[best])
