"""Metrics: character F1 behaves like a score, perplexity matches the loss."""


from llmcore.chats import Conversation
from llmcore.evaluate import assistant_turns


def test_assistant_turns_carry_their_history():
    conv = Conversation([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}])
    turns = assistant_turns([conv])
    assert [t.reference for t in turns] == ["a1", "a2"]
    assert [len(t.history) for t in turns] == [1, 3] and turns[1].history[-1]["content"] == "q2"
