"""Real service dialogues (../shared/data): read, tokenised losslessly, windowed within the context."""
import pytest

from llmcore.chats import DEMO_DATA, read_conversations
from llmcore.dataset import make_turn_examples
from llmcore.prompting import PromptRecipe
from llmcore.retrieval import EvidenceIndex
from llmcore.tokenizer import Tokenizer

from .conftest import shared_file


@pytest.mark.parametrize("name, conversations", [("crosswoz_test.chat.jsonl", 500), ("multiwoz_test.chat.jsonl", 1000)])
def test_real_dialogues_load_and_round_trip(name, conversations):
    convs, skipped = read_conversations([shared_file(name)])
    assert len(convs) == conversations and skipped == 0
    texts = [m["content"] for c in convs for m in c.messages]
    tok = Tokenizer.train(texts, max_size=8000, min_freq=2)
    assert len(tok) <= 8000
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    recipe = PromptRecipe(evidence_k=2, max_history=4)
    examples = make_turn_examples(convs[:100], tok, 256, EvidenceIndex.build(convs[:100]), recipe)
    assert all(len(e.ids) <= 257 for e in examples)
    answered = sum(sum(e.mask) for e in examples)
    expected = sum(min(len(tok.encode(m["content"])) + 1, 128) for c in convs[:100] for i, m in enumerate(c.messages)
                   if m["role"] == "assistant" and i > 0)
    assert answered == expected  # every assistant turn is trained once, in full unless longer than half the context


def test_chinese_words_shorten_sequences():
    convs, _ = read_conversations([shared_file("crosswoz_test.chat.jsonl")])
    texts = [m["content"] for c in convs[:200] for m in c.messages]
    tok = Tokenizer.train(texts)
    chars = sum(map(len, texts))
    tokens = sum(len(tok.encode(t)) for t in texts)
    assert tokens < 0.8 * chars


def test_demo_corpus_shape():
    convs, _ = read_conversations([DEMO_DATA])
    topics = {}
    for c in convs:
        assert [m["role"] for m in c.messages] == ["user", "assistant"]
        topics.setdefault(c.meta["topic"], set()).add(c.messages[1]["content"])
    assert len(topics) >= 150
    assert all(len(answers) == 1 for answers in topics.values())
    per_topic = {t: sum(c.meta["topic"] == t for c in convs) for t in topics}
    assert all(2 <= n <= 7 for n in per_topic.values())  # a question and its similar ones
    langs = {c.meta["lang"] for c in convs}
    assert langs == {"zh", "en"} and sum(c.meta["lang"] == "zh" for c in convs) > len(convs) / 2
