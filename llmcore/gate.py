"""Is this answer right? A calibrated probability, learned per version on its held-out turns.

    x = answer_features(text, confidence, hits)          # what the server knows when the answer is done
    gate = Gate.fit(rows, labels)                        # logistic regression; labels: answer char-F1 >= 0.5
    gate.probability(x)                                  # in [0, 1]; returned as kefu.p_correct
    gate_curve(probabilities, labels)                    # precision / coverage / recall per threshold
    cross_fitted_probabilities(rows, labels)             # each row scored by a gate fitted on the other half
    gate.save(folder); Gate.load(folder)                 # gate.json beside the weights

A small model's mean token log-probability alone hardly separates right from wrong answers (it is near 0
for both). Whether the answer agrees with the evidence it was given, and how well that evidence matched
the question, do: a model that copies a stored answer for a question like the stored one is usually
right; one that writes something no evidence supports, for a question nothing matched, usually is not.
Pure Python: the bot may import it without torch.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmcore.retrieval import Hit, char_f1

GATE_FILE = "gate.json"
RIGHT_F1 = 0.5  # an answer with at least this char-F1 to the reference counts as right
FEATURES = ("confidence", "agreement", "retrieval", "short")
MIN_CONFIDENCE = -8.0  # an empty answer's -inf, and outliers, are clipped here
MIN_FIT_ROWS, MIN_FIT_CLASS = 50, 5  # fewer held-out answers, or fewer right or wrong ones among them: no gate


def answer_features(text: str, confidence: float | None, hits: Sequence[Hit]) -> list[float]:
    """Mean log-probability, char-F1 to the closest evidence, the best evidence's match score, and shortness."""
    conf = MIN_CONFIDENCE if confidence is None or not math.isfinite(confidence) else max(confidence, MIN_CONFIDENCE)
    agreement = max((char_f1(text, h.response) for h in hits), default=0.0)
    retrieval = hits[0].score if hits else 0.0
    short = 1.0 / (1.0 + len(text.strip()))
    return [conf, agreement, retrieval, short]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class Gate:
    weights: tuple[float, ...]
    bias: float

    def probability(self, x: Sequence[float]) -> float:
        return _sigmoid(self.bias + sum(w * v for w, v in zip(self.weights, x)))

    @classmethod
    def fit(cls, rows: Sequence[Sequence[float]], labels: Sequence[bool], l2: float = 1e-3, steps: int = 30) -> Gate | None:
        """Logistic regression by Newton's method (a few hundred rows, four features); None with too few rows or
        too few of either class to say anything (the bot then falls back to its other checks)."""
        if len(rows) < MIN_FIT_ROWS or min(sum(labels), len(labels) - sum(labels)) < MIN_FIT_CLASS:
            return None
        xs = [[1.0, *map(float, x)] for x in rows]  # the bias as a constant feature
        d = len(xs[0])
        theta = [0.0] * d
        for _ in range(steps):
            grad = [l2 * t for t in theta]
            hess = [[l2 * (i == j) for j in range(d)] for i in range(d)]
            for x, y in zip(xs, labels):
                p = _sigmoid(sum(t * v for t, v in zip(theta, x)))
                for i in range(d):
                    grad[i] += (p - y) * x[i]
                    for j in range(d):
                        hess[i][j] += p * (1 - p) * x[i] * x[j]
            step = _solve(hess, grad)
            theta = [t - s for t, s in zip(theta, step)]
            if max(map(abs, step)) < 1e-6:
                break
        return cls(tuple(theta[1:]), theta[0])

    def save(self, folder: Path) -> None:
        data = {"features": list(FEATURES), "weights": list(self.weights), "bias": self.bias, "right_f1": RIGHT_F1}
        (folder / GATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Gate | None:
        path = folder / GATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("features") != list(FEATURES):
            return None  # another feature set: unusable, and the bot falls back to its other checks
        return cls(tuple(float(w) for w in data["weights"]), float(data["bias"]))


def gate_curve(probabilities: Sequence[float], labels: Sequence[bool],
               thresholds: Sequence[float] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> list[dict]:
    """For each threshold: the share of answers let through, how many of those are right, how many right ones pass."""
    total_right = sum(labels)
    curve = []
    for t in thresholds:
        passed = [y for p, y in zip(probabilities, labels) if p >= t]
        right = sum(passed)
        curve.append({"threshold": t, "coverage": round(len(passed) / max(len(labels), 1), 3),
                      "precision": round(right / len(passed), 3) if passed else None,
                      "recall": round(right / total_right, 3) if total_right else None})
    return curve


def cross_fitted_probabilities(rows: Sequence[Sequence[float]], labels: Sequence[bool]) -> list[float] | None:
    """Each row's probability by a gate fitted on the other half of the rows (the first half against the second: held-out
    turns come conversation by conversation, so the halves share few conversations), for a curve that says what the
    gate does on answers it was not fitted on. None when either half is too small to fit on (Gate.fit)."""
    middle = len(rows) // 2
    halves = [(range(0, middle), range(middle, len(rows))), (range(middle, len(rows)), range(0, middle))]
    probabilities: list[float] = []
    for scored, fitted_on in halves:
        gate = Gate.fit([rows[i] for i in fitted_on], [labels[i] for i in fitted_on])
        if gate is None:
            return None
        probabilities += [gate.probability(rows[i]) for i in scored]
    return probabilities


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """x with a x = b, by Gaussian elimination with partial pivoting (a is small and positive definite)."""
    n = len(b)
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            m[r] = [rv - factor * cv for rv, cv in zip(m[r], m[col])]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x
