"""Is this answer right? A calibrated probability, learned per version on its held-out turns.

    x = answer_features(text, confidence, hits)          # what the server knows when the answer is done
    gate = Gate.fit(rows, labels)                        # logistic regression; labels: answer char-F1 >= 0.5
    gate.probability(x)                                  # in [0, 1]; returned as kefu.p_correct
    gate_curve(probabilities, labels)                    # precision / coverage / recall per threshold
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
    def fit(cls, rows: Sequence[Sequence[float]], labels: Sequence[bool], l2: float = 1e-2, steps: int = 2000) -> Gate | None:
        """Logistic regression by gradient descent (a few hundred rows, four features); None without both classes."""
        if not rows or all(labels) or not any(labels):
            return None
        n, d = len(rows), len(rows[0])
        w, b, lr = [0.0] * d, 0.0, 0.5
        for _ in range(steps):
            grad_w, grad_b = [l2 * wi for wi in w], 0.0
            for x, y in zip(rows, labels):
                err = _sigmoid(b + sum(wi * xi for wi, xi in zip(w, x))) - float(y)
                grad_b += err / n
                for i in range(d):
                    grad_w[i] += err * x[i] / n
            w = [wi - lr * g for wi, g in zip(w, grad_w)]
            b -= lr * grad_b
        return cls(tuple(w), b)

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
