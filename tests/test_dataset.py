"""Training data: clear errors naming file and line, seeded splits, windows that train each token once."""
import json

import pytest

from llmcore.dataset import (
    IGNORE_INDEX,
    Conversation,
    DataError,
    collate,
    make_batches,
    make_examples,
    make_windows,
    read_conversations,
    split_conversations,
)
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


def test_long_conversations_are_windowed_and_each_target_trained_once():
    ids = list(range(100))
    mask = [1 if i % 3 else 0 for i in range(100)]
    starts = list(range(0, 100, 10))
    windows = make_windows(ids, mask, starts, block_size=24)
    assert all(len(w.ids) <= 25 for w in windows) and len(windows) > 3
    trained = {}
    for w in windows:
        for i, m in zip(w.ids, w.mask):
            if m:
                trained[i] = trained.get(i, 0) + 1
    assert trained == {i: 1 for i in range(1, 100) if mask[i]}  # position 0 is never a target


def test_batches_respect_the_token_budget_and_mask_padding():
    tok = Tokenizer.train(["你好您好请问退货"], min_freq=1)
    convs = [Conversation([{"role": "user", "content": "你好" * n}, {"role": "assistant", "content": "您好"}]) for n in range(1, 30)]
    examples = make_examples(convs, tok, block_size=64)
    batches = make_batches(examples, max_tokens=200, pad_id=tok.pad_id)
    assert sum(x.shape[0] for x, _ in batches) == len(examples)
    assert all(x.numel() <= 200 or x.shape[0] == 1 for x, _ in batches)
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
