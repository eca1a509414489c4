"""Training data: clear errors naming file and line, seeded splits, windows that train each token once."""
import json

import pytest

from llmcore.chats import Conversation, DataError, read_conversations, split_conversations
from llmcore.dataset import IGNORE_INDEX, SHAPE_MULTIPLE, collate, make_batches, make_turn_examples
from llmcore.prompting import PromptRecipe
from llmcore.retrieval import EvidenceIndex
from llmcore.tokenizer import Tokenizer

GOOD = json.dumps({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"}]}, ensure_ascii=False)


def write(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant turn"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}), "unknown role 'robot'"),
    (json.dumps({"messages": []}), "empty"),
    (json.dumps({"text": "hi"}), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}), "no text content"),
    (json.dumps(["a"]), "messages"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, reason):
    path = write(tmp_path, GOOD, "", bad, GOOD)
    with pytest.raises(DataError) as err:
        read_conversations([path])
    assert f"{path}:3:" in str(err.value) and reason in str(err.value)


def test_skip_bad_counts_instead_of_failing(tmp_path):
    path = write(tmp_path, GOOD, "{oops", json.dumps({"messages": [{"role": "user", "content": "x"}]}), GOOD)
    conversations, skipped = read_conversations([path], skip_bad=True)
    assert len(conversations) == 2 and skipped == 2
    assert conversations[1].origin == f"{path}:4"


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"data.jsonl:2:"):
        read_conversations([path])


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    empty = write(tmp_path, "", name="empty.jsonl")
    with pytest.raises(DataError, match="empty.jsonl: no conversations"):
        read_conversations([empty])
    with pytest.raises(DataError, match="cannot open"):
        read_conversations([tmp_path / "nope.jsonl"])


def test_split_is_by_conversation_seeded_and_disjoint(tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) for i in range(50)]
    conversations, _ = read_conversations([write(tmp_path, *lines)])
    train, val = split_conversations(conversations, 0.2, seed=7)
    again_train, again_val = split_conversations(conversations, 0.2, seed=7)
    other_train, other_val = split_conversations(conversations, 0.2, seed=8)
    assert len(val) == 10 and len(train) == 40
    assert [c.origin for c in val] == [c.origin for c in again_val]
    assert [c.origin for c in val] != [c.origin for c in other_val]
    assert not {c.origin for c in train} & {c.origin for c in val}


def test_a_held_out_conversation_stays_held_out_as_the_data_grows():
    """A retraining compares the new version with the current one on the new version's held-out conversations: with a
    shuffle of positions most of them had been the current version's training data (here 35 of 61); now all but the
    odd one at the boundary were held out last time too, and copies of one conversation fall on one side."""
    from llmcore.chats import Conversation

    def conversation(i: int) -> Conversation:
        return Conversation([{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}])

    before = [conversation(i) for i in range(200)]
    after = before + [conversation(i) for i in range(200, 300)] + [conversation(7)] * 3  # more logged; copies
    trained_before, _ = split_conversations(before, 0.2, seed=0)
    _, held_out_now = split_conversations(after, 0.2, seed=0)
    seen = {c.messages[0]["content"] for c in trained_before}
    assert sum(c.messages[0]["content"] in seen for c in held_out_now) <= 3
    train, val = split_conversations(after, 0.2, seed=0)
    assert not {c.messages[0]["content"] for c in train} & {c.messages[0]["content"] for c in val}


def dialog(*texts: str) -> Conversation:
    return Conversation([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)])


DIALOGS = [dialog("故宫门票多少钱", "故宫门票60元。", "开放时间呢", "8点半到17点。"),
           dialog("故宫门票贵吗", "门票60元，学生半价。"),
           dialog("北京饭店电话多少", "电话是010-65137766。", "地址呢", "东长安街33号。", "谢谢", "不客气。")]


@pytest.fixture
def chars() -> Tokenizer:
    return Tokenizer.train((m["content"] for c in DIALOGS for m in c.messages), words=False)


def test_one_example_per_assistant_turn_with_loss_on_that_answer_only(chars):
    examples = make_turn_examples(DIALOGS, chars, block_size=128, index=None, recipe=PromptRecipe())
    assert len(examples) == 6
    for example, conversation_turn in zip(examples, ["故宫门票60元。", "8点半到17点。", "门票60元，学生半价。"]):
        trained = [t for t, m in zip(example.ids, example.mask) if m]
        assert chars.decode(trained) == conversation_turn and trained[-1] == chars.end_id
        assert example.ids[example.mask.index(1) - 1] == chars.role_ids["assistant"]  # the prompt ends with the opener


def test_the_target_turn_is_never_its_own_evidence(chars):
    index = EvidenceIndex.build(DIALOGS)
    recipe = PromptRecipe(evidence_k=2, max_history=4)
    examples = make_turn_examples(DIALOGS, chars, block_size=128, index=index, recipe=recipe)
    for example, conversation in zip(examples, [0, 0, 1, 2, 2, 2]):
        prompt = example.ids[: example.mask.index(1)]
        own = {m["content"] for m in DIALOGS[conversation].messages if m["role"] == "assistant"}
        evidence = evidence_texts(chars, prompt)
        assert not evidence & own
    first = examples[0].ids[: examples[0].mask.index(1)]
    assert "门票60元，学生半价。" in evidence_texts(chars, first)  # the other dialogue's answer to the same question


def test_served_prompts_may_draw_on_the_same_conversation_but_not_the_same_question(chars):
    conversation = [dialog("故宫门票多少钱", "故宫门票60元。", "故宫门票学生多少钱", "学生半价。")]
    index = EvidenceIndex.build(conversation)
    served = make_turn_examples(conversation, chars, 128, index, PromptRecipe(evidence_k=2), exclude_own=False)
    assert evidence_texts(chars, served[1].ids[: served[1].mask.index(1)]) == {"故宫门票60元。"}
    trained = make_turn_examples(conversation, chars, 128, index, PromptRecipe(evidence_k=2))
    assert evidence_texts(chars, trained[1].ids[: trained[1].mask.index(1)]) == set()


def test_history_is_cut_to_the_recipe_and_context_only_turns_teach_nothing(chars):
    long = dialog("北京饭店电话多少", "电话是010-65137766。", "地址呢", "东长安街33号。", "谢谢", "不客气。")
    long.messages[1]["weight"] = 0
    examples = make_turn_examples([long], chars, 128, None, PromptRecipe(max_history=2), seed=1)
    assert [chars.decode([t for t, m in zip(e.ids, e.mask) if m]) for e in examples] == ["东长安街33号。", "不客气。"]
    last = chars.decode(examples[-1].ids[: examples[-1].mask.index(1)])
    assert "谢谢" in last and "电话" not in last  # at most two earlier turns


def test_an_answer_longer_than_half_the_context_is_cut_and_not_ended(chars):
    [example] = make_turn_examples([dialog("故宫门票多少钱", "门票60元。" * 40)], chars, 64, None, PromptRecipe())
    assert len(example.ids) <= 65 and sum(example.mask) == 32 and example.ids[-1] != chars.end_id


def evidence_texts(tok: Tokenizer, prompt: list[int]) -> set[str]:
    texts, current = set(), None
    for t in prompt:
        if t == tok.evidence_id:
            current = []
        elif t == tok.end_id and current is not None:
            texts.add(tok.decode(current))
            current = None
        elif current is not None:
            current.append(t)
    return texts


def test_batches_respect_the_token_budget_and_mask_padding():
    tok = Tokenizer.train(["你好您好请问退货"], min_freq=1)
    convs = [Conversation([{"role": "user", "content": "你好" * n}, {"role": "assistant", "content": "您好"}]) for n in range(1, 30)]
    examples = make_turn_examples(convs, tok, block_size=64, index=None, recipe=PromptRecipe())
    batches = make_batches(examples, max_tokens=200, pad_id=tok.pad_id)
    assert sum(x.shape[0] for x, _ in batches) == len(examples)
    assert all(x.numel() <= 200 or x.shape[0] == 1 for x, _ in batches)
    longest = max(len(e.ids) for e in examples) - 1
    assert all(x.shape[1] % SHAPE_MULTIPLE == 0 or x.shape[1] == longest for x, _ in batches)  # few shapes, none too long
    assert len({x.shape[1] for x, _ in batches}) <= longest // SHAPE_MULTIPLE + 1
    assert all(x.shape[1] - max(int((row != tok.pad_id).sum()) for row in x) < SHAPE_MULTIPLE for x, _ in batches)
    x, y = collate(examples[:3], tok.pad_id)
    assert ((x == tok.pad_id) <= (y == IGNORE_INDEX)).all()  # no loss on padding
    for row, example in enumerate(examples[:3]):  # targets are the next ids where the mask says so
        expected = [t for t, m in zip(example.ids[1:], example.mask[1:]) if m]
        assert y[row][y[row] != IGNORE_INDEX].tolist() == expected


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "excel.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + GOOD.encode() + b"\r\n")
    conversations, _ = read_conversations([path])
    assert len(conversations) == 2 and conversations[0].messages[0]["content"] == "你好"


def test_lone_surrogates_are_rejected_before_training(tmp_path):
    path = write(tmp_path, '{"messages": [{"role": "user", "content": "bad \\ud800"}, {"role": "assistant", "content": "x"}]}')
    with pytest.raises(DataError, match=r":1: message 1 contains invalid Unicode"):
        read_conversations([path])


def test_question_loss_learns_each_question_once(chars):
    plain = make_turn_examples(DIALOGS, chars, 128, None, PromptRecipe(max_history=4))
    with_questions = make_turn_examples(DIALOGS, chars, 128, None, PromptRecipe(max_history=4), question_loss=True)
    learned = [chars.decode([t for t, m in zip(e.ids, e.mask) if m], skip_special=False) for e in with_questions]
    assert learned[1] == "开放时间呢<|end|>8点半到17点。<|end|>"  # the question of this window, not the earlier turns
    questions = [m["content"] for c in DIALOGS for m in c.messages if m["role"] == "user"]
    assert sum(sum(e.mask) for e in with_questions) - sum(sum(e.mask) for e in plain) == sum(len(q) + 1 for q in questions)


def test_a_stock_answer_given_elsewhere_joins_the_evidence_even_when_bm25_misses_it(chars):
    faq = [dialog("怎么退货", "七天内申请退货。"), dialog("东西不想要了能退吗", "七天内申请退货。"), dialog("运费多少", "满69元包邮。")]
    tok = Tokenizer.train((m["content"] for c in faq for m in c.messages), words=False)
    index = EvidenceIndex.build(faq)
    assert not index.search(faq[1].messages[:1], k=2, exclude_group=1)  # the wordings share no word: BM25 finds nothing
    with_stock = [e for seed in range(20) for e in make_turn_examples(faq, tok, 128, index, PromptRecipe(evidence_k=2), seed=seed)
                  if "七天内申请退货。" in evidence_texts(tok, e.ids[: e.mask.index(1)])]
    assert 20 < len(with_stock) < 40  # most of the time, for both wordings: 40 windows of that answer over 20 seeds
    for seed in range(5):  # never for held-out turns
        plain = make_turn_examples(faq, tok, 128, index, PromptRecipe(evidence_k=2), exclude_own=False, seed=seed)
        assert "七天内申请退货。" not in evidence_texts(tok, plain[1].ids[: plain[1].mask.index(1)])


def test_a_turn_repeated_for_weight_is_not_its_own_evidence():
    weighted = [dialog("可以加盟开店吗", "目前暂不开放加盟合作。")] * 3 + [dialog("加盟店怎么开", "请发邮件联系我们。")]
    index = EvidenceIndex.build(weighted)
    question = weighted[0].messages[:1]
    assert [h.response for h in index.search(question, 2, exclude_group=0)] == ["请发邮件联系我们。"]  # copies 1, 2 skipped
    assert not index.is_stock("目前暂不开放加盟合作。", "可以加盟开店吗")  # stored again for the same question: no stock answer
    assert index.is_stock("目前暂不开放加盟合作。", "加盟费多少")


def test_a_stored_turn_of_the_very_same_question_is_never_evidence():
    index = EvidenceIndex.build([dialog("可以加盟开店吗？", "目前暂不开放加盟合作。"), dialog("加盟店怎么开", "请发邮件联系我们。")])
    assert [h.response for h in index.search([{"role": "user", "content": "可以加盟开店吗"}], 2)] == ["请发邮件联系我们。"]
