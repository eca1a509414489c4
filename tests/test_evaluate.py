"""Metrics: character F1 behaves like a score, perplexity matches the loss."""

import pytest

from llmcore.dataset import Conversation
from llmcore.evaluate import assistant_turns, char_f1


@pytest.mark.parametrize("pred, ref, expected", [
    ("七天无理由退货", "七天无理由退货", 1.0),
    ("", "退货", 0.0),
    ("abc", "xyz", 0.0),
    ("退货", "退货退货", 2 * 1.0 * 0.5 / 1.5),  # precision 1, recall 0.5
    ("a b c", "abc", 1.0),  # spaces do not count
    ("", "", 1.0),
])
def test_char_f1(pred, ref, expected):
    assert char_f1(pred, ref) == pytest.approx(expected)


def test_char_f1_is_symmetric_and_bounded():
    a, b = "满69元包邮", "满99元包邮，不满收8元"
    assert char_f1(a, b) == pytest.approx(char_f1(b, a))
    assert 0 < char_f1(a, b) < 1


def test_assistant_turns_carry_their_history():
    conv = Conversation([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}])
    turns = assistant_turns([conv])
    assert [t.reference for t in turns] == ["a1", "a2"]
    assert [len(t.history) for t in turns] == [1, 3] and turns[1].history[-1]["content"] == "q2"
