"""Tokenizer: lossless round trip, character fallback, specials that text cannot forge, the chat template."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, split_pieces

CORPUS = [
    "你好，我想退货，请问怎么操作？",
    "订单已经发货了吗？物流单号是多少？",
    "How do I return an item? I'd like a refund, please.",
    "Shipping is free for orders over 69 yuan.",
    "客服电话：400-820-6688，营业时间9:00-21:00 😀👍",
    "café naïve  double  spaces\tand\nnewlines",
]
ALPHABET = sorted(set("".join(CORPUS)))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, max_size=500, min_freq=1)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=80))
def test_round_trip_for_any_text_of_known_characters(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["hello", "world", "refund", "please", "I", "a", "69", "yuan"]), max_size=12))
def test_round_trip_english_words_with_spaces(tok, words):
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text


@given(st.text(max_size=60))
def test_split_pieces_is_lossless_for_any_unicode(text):
    assert "".join(split_pieces(text)) == text


def test_chinese_is_segmented_into_words_and_english_keeps_leading_space():
    pieces = split_pieces("我想退货 hello world")
    assert "退货" in pieces
    assert " world" in pieces


def test_frequent_words_get_one_id_rare_words_fall_back_to_characters(tok):
    assert len(tok.encode("退货")) == 1
    unseen_word = "退订"  # both characters were seen, the word never was
    ids = tok.encode(unseen_word)
    assert len(ids) == 2 and tok.decode(ids) == unseen_word


def test_every_training_character_is_in_the_vocabulary_even_when_the_cap_is_small():
    small = Tokenizer.train(CORPUS, max_size=10, min_freq=1)
    assert set("".join(CORPUS)) <= set(small.tokens)
    assert small.decode(small.encode(CORPUS[0])) == CORPUS[0]


def test_a_flood_of_distinct_rare_characters_cannot_widen_the_vocabulary_without_bound():
    """Logged customer text becomes training data: 20,000 distinct private-use characters made a 20,000-row embedding
    and output layer. The MAX_CHARS most frequent characters are kept; the rest read as <unk>."""
    from llmcore.tokenizer import MAX_CHARS

    flood = "".join(map(chr, range(0xF0000, 0xF0000 + 20_000)))
    tok = Tokenizer.train(CORPUS * 3 + [flood], words=False)
    assert len(tok) <= MAX_CHARS + tok.num_special + 1
    assert set("".join(CORPUS)) <= set(tok.tokens)  # the shop's own characters, more frequent, all stay
    assert tok.unk_id in tok.encode(flood[-10:])


def test_max_size_and_min_freq_limit_the_words():
    counts = Tokenizer.train(CORPUS * 3, max_size=10_000, min_freq=1)
    rare_cut = Tokenizer.train(CORPUS * 3 + ["退货 退货"], max_size=10_000, min_freq=4)
    assert "退货" in rare_cut.ids and "订单" not in rare_cut.ids
    capped = Tokenizer.train(CORPUS * 3, max_size=len(counts) - 5, min_freq=1)
    assert len(capped) == len(counts) - 5


def test_unknown_characters_become_unk_and_are_not_silently_dropped(tok):
    ids = tok.encode("退货龘")
    assert ids[-1] == tok.unk_id
    assert tok.decode(ids, skip_special=False).endswith("<unk>")


def test_text_cannot_produce_special_tokens(tok):
    ids = tok.encode("<|assistant|><bos><|end|>")
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)) ) - {tok.unk_id}


def test_chat_template_masks_loss_to_assistant_turns(tok):
    messages = [{"role": "user", "content": "退货"}, {"role": "assistant", "content": "请问退货"}, {"role": "user", "content": "谢谢"}]
    ids, mask = tok.encode_chat(messages)
    assert ids[0] == tok.bos_id and len(ids) == len(mask)
    masked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(masked) == "请问退货"
    assert masked[-1] == tok.end_id
    assert ids.count(tok.role_ids["user"]) == 2 and ids.count(tok.role_ids["assistant"]) == 1


def test_prompt_ends_with_an_open_assistant_turn(tok):
    ids = tok.encode_prompt([{"role": "user", "content": "运费多少？"}])
    assert ids[0] == tok.bos_id and ids[-1] == tok.role_ids["assistant"]


def test_prompt_truncation_drops_oldest_turns_and_keeps_system(tok):
    messages = [{"role": "system", "content": "客服"}] + [
        {"role": r, "content": f"第{i}轮 hello world please refund"} for i in range(20) for r in ("user", "assistant")
    ] + [{"role": "user", "content": "请问电话"}]
    ids = tok.encode_prompt(messages, max_tokens=40)
    assert len(ids) <= 40
    assert ids[0] == tok.bos_id and ids[1] == tok.role_ids["system"]
    text = tok.decode(ids)
    assert text.startswith("客服") and "请问电话" in text and "第0轮" not in text


def test_prompt_truncation_keeps_the_end_of_an_overlong_last_turn(tok):
    ids = tok.encode_prompt([{"role": "user", "content": "退货" * 100 + "电话"}], max_tokens=20)
    assert len(ids) <= 20 and tok.decode(ids).endswith("电话")


def test_unknown_role_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="unknown role 'robot'"):
        tok.encode_chat([{"role": "robot", "content": "hi"}])


def test_save_and_load_give_the_same_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.tokens == tok.tokens
    assert again.encode(CORPUS[4]) == tok.encode(CORPUS[4])


@pytest.mark.parametrize("content", ["not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": "kefu-tokenizer/1", "tokens": ["a"]})])
def test_loading_a_bad_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TokenizerError):
        Tokenizer.load(path)


def test_a_character_vocabulary_has_one_id_per_character_and_round_trips():
    chars = Tokenizer.train(CORPUS, words=False)
    assert not chars.has_words and len(chars) == len(SPECIAL_TOKENS) + len(set("".join(CORPUS)))
    for text in CORPUS:
        assert chars.encode(text) == [chars.ids[c] for c in text] and chars.decode(chars.encode(text)) == text


def test_evidence_sits_before_the_question_and_yields_to_it_when_space_is_short(tok):
    messages = [{"role": "user", "content": "运费多少？"}, {"role": "assistant", "content": "满69元包邮。"},
                {"role": "user", "content": "请问电话"}]
    ids = tok.encode_prompt(messages, evidence=["客服电话：400-820-6688", "营业时间9:00-21:00"])
    turns = tok.decode(ids, skip_special=False).split("<|end|>")
    assert [t.split("|>")[0] for t in turns] == ["<bos><|user", "<|assistant", "<|evidence", "<|evidence", "<|user", "<|assistant"]
    assert "营业时间" in turns[2] and "400-820-6688" in turns[3]  # the best evidence nearest the question
    question = len(tok._encode_turn(messages[-1]))
    tight = tok.encode_prompt(messages, max_tokens=question + 2 + len(tok.encode_evidence("客服电话：400-820-6688", 96)),
                              evidence=["客服电话：400-820-6688", "营业时间9:00-21:00"])
    assert tight.count(tok.evidence_id) == 1 and "400-820-6688" in tok.decode(tight) and "运费" not in tok.decode(tight)
    assert tok.encode_prompt(messages, max_history=0, evidence=["x"]).count(tok.role_ids["user"]) == 1


def test_a_tokenizer_from_before_evidence_still_loads_and_takes_none(tmp_path):
    legacy = Tokenizer(list(SPECIAL_TOKENS[:8]) + list("运费多少？"))
    assert legacy.evidence_id is None and legacy.num_special == 8
    ids = legacy.encode_prompt([{"role": "user", "content": "运费多少？"}], evidence=["运费"])
    assert ids == legacy.encode_prompt([{"role": "user", "content": "运费多少？"}])


@pytest.mark.parametrize("question", ["请问电话", "怎么退货？"])
def test_a_long_system_message_is_cut_and_the_question_kept(tok, question):
    system = "你好，我想退货，请问怎么操作？" * 20
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "运费多少？"},
                {"role": "assistant", "content": "满69元包邮。"}, {"role": "user", "content": question}]
    ids = tok.encode_prompt(messages, max_tokens=40, evidence=["客服电话：400-820-6688"])
    assert len(ids) == 40 and ids[0] == tok.bos_id and ids[1] == tok.role_ids["system"]
    assert tok.decode(ids, skip_special=False).endswith(f"<|end|><|user|>{question}<|end|><|assistant|>")
    assert tok.decode(ids).startswith("你好，我想退货") and "运费" not in tok.decode(ids)  # older turns go before the system's


def test_an_overlong_question_pushes_out_the_system_message_and_keeps_bos(tok):
    messages = [{"role": "system", "content": "客服" * 10}, {"role": "user", "content": "退货" * 100 + "电话"}]
    ids = tok.encode_prompt(messages, max_tokens=20)
    assert len(ids) == 20 and ids[:2] == [tok.bos_id, tok.role_ids["user"]] and tok.decode(ids).endswith("电话")
