"""llmcore/gate.py: the calibrated probability that an answer is right, and its precision/recall curve."""
import random

import pytest

from llmcore.gate import Gate, answer_features, cross_fitted_probabilities, gate_curve
from llmcore.retrieval import Hit


def test_features_measure_agreement_with_the_evidence():
    hits = [Hit("电话是010-65137766。", 0.9, "电话多少"), Hit("地址是东长安街33号。", 0.5, "地址")]
    copied = answer_features("电话是010-65137766。", -0.2, hits)
    invented = answer_features("我们的营业时间是早上九点。", -0.2, hits)
    assert copied[1] == pytest.approx(1.0) and invented[1] < 0.3  # agreement: char-F1 to the closest evidence
    assert copied[2] == 0.9  # how well the best evidence matched the question
    assert answer_features("", None, [])[:3] == [-8.0, 0.0, 0.0]  # an empty answer: clipped, not -inf


def test_fit_learns_which_answers_are_right_and_is_calibrated():
    rng = random.Random(0)
    rows, labels = [], []
    for _ in range(300):  # right answers agree with their evidence; confidence says little (as with small models)
        right = rng.random() < 0.4
        agreement = min(1.0, max(0.0, rng.gauss(0.8 if right else 0.3, 0.15)))
        rows.append([rng.uniform(-1.0, 0.0), agreement, rng.uniform(0, 1), 0.05])
        labels.append(right)
    gate = Gate.fit(rows, labels)
    assert gate is not None and gate.weights[1] > 1.0  # agreement carries the decision
    probabilities = [gate.probability(x) for x in rows]
    assert gate.probability([-0.5, 0.9, 0.5, 0.05]) > 0.8 > 0.2 > gate.probability([-0.5, 0.2, 0.5, 0.05])
    assert sum(probabilities) / len(probabilities) == pytest.approx(sum(labels) / len(labels), abs=0.03)  # calibrated on average
    curve = {row["threshold"]: row for row in gate_curve(probabilities, labels)}
    assert curve[0.0]["coverage"] == 1.0 and curve[0.0]["recall"] == 1.0
    assert curve[0.5]["precision"] > 0.85 and curve[0.5]["recall"] > 0.8


def test_gate_needs_both_classes_and_round_trips(tmp_path):
    assert Gate.fit([[0.0, 1.0, 1.0, 0.1]] * 100, [True] * 100) is None  # nothing wrong to learn from
    assert Gate.fit([[0.0, 1.0, 1.0, 0.1]] * 20, [True, False] * 10) is None  # too few held-out answers to say anything
    gate = Gate((0.5, 3.0, 1.0, -2.0), -1.5)
    gate.save(tmp_path)
    assert Gate.load(tmp_path) == gate
    (tmp_path / "gate.json").write_text('{"features": ["something", "else"], "weights": [1, 2], "bias": 0}')
    assert Gate.load(tmp_path) is None  # another feature set: unusable rather than wrong


def test_curve_counts_precision_and_recall():
    curve = gate_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False], thresholds=(0.5,))
    assert curve == [{"threshold": 0.5, "coverage": 0.5, "precision": 0.5, "recall": 0.5}]


def test_the_cross_fitted_curve_scores_each_half_by_the_other_halfs_gate():
    """Two halves that disagree (agreement means right in the first, wrong in the second): each half scored by the other
    half's gate is scored backwards, which is what the curve must show for answers the gate never saw (a gate fitted on
    all the rows, or on the half it scores, would not)."""
    rng = random.Random(1)
    rows, labels = [], []
    for half in (0, 1):
        for _ in range(120):
            agreement = rng.random()
            rows.append([-0.5, agreement, 0.5, 0.05])
            labels.append((agreement > 0.5) == (half == 0) if rng.random() < 0.9 else rng.random() < 0.5)
    rows.append([-0.5, 0.99, 0.5, 0.05])  # an odd count: every row is scored once
    labels.append(True)
    probabilities = cross_fitted_probabilities(rows, labels)
    assert probabilities is not None and len(probabilities) == len(rows)
    first_gate = Gate.fit(rows[120:], labels[120:])  # fitted on the second half (and the odd row), scores the first
    assert probabilities[:120] == [first_gate.probability(x) for x in rows[:120]]
    right_of_confident = [y for p, y in zip(probabilities, labels) if p >= 0.7]
    assert sum(right_of_confident) / len(right_of_confident) < 0.3  # backwards: the held-out truth
    assert cross_fitted_probabilities(rows[:80], labels[:80]) is None  # halves of 40: too few to fit either
