"""llmcore/retrieval.py: BM25 scores, the evidence index a version carries, and the one answer metric."""
from collections import Counter

import pytest

from llmcore.chats import Conversation
from llmcore.retrieval import Bm25, EvidenceIndex, char_f1, tokenize


def conv(*texts: str, weights: dict[int, int] | None = None) -> Conversation:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    for i, w in (weights or {}).items():
        messages[i]["weight"] = w
    return Conversation(messages)


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


def test_bm25_scores_are_normalized_and_rank_by_overlap():
    docs = [tokenize(t) for t in ("北京饭店的地址在哪里", "北京饭店的电话是多少", "故宫门票多少钱")]
    bm25 = Bm25(docs)
    scores = bm25.scores(Counter(tokenize("北京饭店的地址")))
    assert set(scores) == {0, 1}  # the third shares no word
    assert scores[0] > scores[1] and all(0 < s <= 1 for s in scores.values())


def test_evidence_index_finds_the_answer_to_the_nearest_question():
    index = EvidenceIndex.build([conv("北京饭店的地址在哪里", "地址是东城区东长安街33号。"),
                                 conv("故宫门票多少钱", "故宫门票60元。", "开放时间呢", "8:30到17:00。")])
    hits = index.search([{"role": "user", "content": "请问故宫门票是多少"}], k=2)
    assert hits[0].response == "故宫门票60元。" and hits[0].question == "故宫门票多少钱"
    assert index.search([{"role": "user", "content": "开放时间是几点"}], k=1)[0].response == "8:30到17:00。"  # later turns too
    assert index.search([{"role": "user", "content": "量子力学"}], k=2) == []
    assert index.search([], k=2) == [] and index.search([{"role": "user", "content": "故宫"}], k=0) == []


def test_training_never_retrieves_from_the_target_conversation():
    index = EvidenceIndex.build([conv("故宫门票多少钱", "60元。"), conv("故宫门票贵吗", "门票60元，学生半价。")])
    question = [{"role": "user", "content": "请问故宫门票多少钱"}]
    assert [h.response for h in index.search(question, k=2)] == ["60元。", "门票60元，学生半价。"]
    assert [h.response for h in index.search(question, k=2, exclude_group=0)] == ["门票60元，学生半价。"]


def test_each_response_is_evidence_once_and_context_only_turns_are_not_stored():
    index = EvidenceIndex.build([conv("怎么退货", "七天内申请退货。"), conv("如何退货", "七天内申请退货。"),
                                 conv("退货运费", "抱歉，我没有理解。", "退货运费谁出", "质量问题我们出。", weights={1: 0})])
    hits = index.search([{"role": "user", "content": "退货"}], k=3)
    assert [h.response for h in hits].count("七天内申请退货。") == 1
    assert all(h.response != "抱歉，我没有理解。" for h in index.search([{"role": "user", "content": "退货运费"}], k=5))


def test_a_huge_query_costs_only_its_tail():
    index = EvidenceIndex.build([conv("故宫门票多少钱", "60元。")])
    hits = index.search([{"role": "user", "content": "故宫" * 20_000 + "门票多少钱"}], k=1)
    assert hits and hits[0].response == "60元。"


def test_index_round_trips_through_its_file(tmp_path):
    index = EvidenceIndex.build([conv("故宫门票多少钱", "60元。"), conv("北京饭店电话", "010-65137766。")])
    index.save(tmp_path / "evidence.jsonl")
    loaded = EvidenceIndex.load(tmp_path / "evidence.jsonl")
    assert loaded.turns == index.turns
    (tmp_path / "bad.jsonl").write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="kefu-evidence"):
        EvidenceIndex.load(tmp_path / "bad.jsonl")


def test_one_search_serves_the_evidence_and_the_candidates():
    """The server searches once for a request that chooses its answer (24 stored answers) and takes the prompt's
    evidence from the first of them: the same evidence a search of its own finds, on real dialogues, with and without
    a caller's own evidence."""
    from pathlib import Path

    from llmcore.chats import read_conversations
    from llmcore.evaluate import assistant_turns
    from llmcore.prompting import PromptRecipe, retrieve

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "crosswoz_test.chat.jsonl"
    if not data.exists():
        data = Path(__file__).resolve().parents[1] / "llmcore" / "data" / "demo_faq.chat.jsonl"
    conversations, _ = read_conversations([data])
    index, recipe = EvidenceIndex.build(conversations[20:]), PromptRecipe(evidence_k=2, max_history=4)
    turns = [t for t in assistant_turns(conversations[:20]) if t.history[-1]["role"] == "user"][:60]
    assert len(turns) >= 20
    for turn in turns:
        searched = index.search(turn.history, 24)
        for extra in ([], ["来自常见问题的回答。"]):
            assert retrieve(index, recipe, turn.history, extra, searched=searched) == retrieve(index, recipe, turn.history, extra)
