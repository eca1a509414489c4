"""bot/split.py: Telegram-sized parts, cut at sentence ends, measured in UTF-16 units (after escaping)."""
from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.split import TELEGRAM_LIMIT, split_message, telegram_length


def html_length(text: str) -> int:
    return telegram_length(html.escape(text, quote=False))


def assert_lossless(text: str, parts: list[str]) -> None:
    """The parts are the text in order, less only whitespace where it was cut; no part is empty or padded at a cut."""
    assert all(parts), parts
    assert re.fullmatch(r"\s*" + r"\s*".join(map(re.escape, parts)) + r"\s*", text), parts
    assert all(not p[-1].isspace() for p in parts[:-1]) and all(not p[0].isspace() for p in parts[1:])


def test_telegram_length_counts_utf16_units() -> None:
    assert telegram_length("") == 0
    assert telegram_length("abc") == 3
    assert telegram_length("你好。") == 3
    assert telegram_length("😀") == 2  # outside the BMP: a surrogate pair
    assert telegram_length("👍🏽") == 4  # emoji + skin tone modifier
    assert telegram_length("\ud83d") == 1  # a lone surrogate does not raise


def test_short_text_is_one_part_unchanged() -> None:
    assert split_message("  你好 \n") == ["  你好 \n"]
    assert split_message("x" * TELEGRAM_LIMIT) == ["x" * TELEGRAM_LIMIT]
    assert split_message("") == []


def test_long_chinese_text_splits_at_full_stops() -> None:
    sentences = [f"第{i}条：订单提交后请在三十分钟内完成支付，超时会被自动取消{'，' * (i % 7)}谢谢。" for i in range(300)]
    text = "".join(sentences)
    assert 10_000 <= len(text) < 3 * TELEGRAM_LIMIT
    parts = split_message(text)
    assert "".join(parts) == text and len(parts) == 3
    assert all(telegram_length(p) <= TELEGRAM_LIMIT and p.endswith("。") for p in parts)
    assert all(telegram_length(p) > TELEGRAM_LIMIT - 60 for p in parts[:-1])  # as full as a sentence end allows


def test_english_prefers_sentences_then_newlines_then_spaces() -> None:
    assert split_message("Hello world. This is a test! Another one here.", 20) == ["Hello world.", "This is a test!", "Another one here."]
    assert split_message("version 3.14 is out\nsee notes", 22) == ["version 3.14 is out", "see notes"]
    assert split_message("alpha beta gamma delta", 12) == ["alpha beta", "gamma delta"]
    assert split_message("一二三四五，六七八九十", 8) == ["一二三四五，", "六七八九十"]


def test_no_boundary_means_a_hard_cut() -> None:
    assert split_message("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_closing_quotes_and_ellipses_stay_with_their_sentence() -> None:
    assert split_message("他说：“好的。”然后走了。", 9) == ["他说：“好的。”", "然后走了。"]
    assert split_message("等等……再说吧", 5) == ["等等……", "再说吧"]


def test_emoji_count_two_and_are_never_halved() -> None:
    parts = split_message("😀" * 2049)
    assert [telegram_length(p) for p in parts] == [4096, 2]
    pair = "\ud83d\ude00"  # a surrogate pair kept as two code points (lax decoding)
    parts = split_message(pair * 10, 5)
    assert "".join(parts) == pair * 10 and all(not p.endswith("\ud83d") for p in parts)


def test_emoji_sequences_and_accents_stay_whole_when_possible() -> None:
    family = "👨\u200d👩\u200d👧"
    assert split_message("ab" + family, 9) == ["ab", family]
    assert split_message("cafe\u0301s", 4) == ["caf", "e\u0301s"]


def test_crlf_is_not_split() -> None:
    text = "a\r\n" * 5
    for limit in range(2, 8):
        parts = split_message(text, limit)
        assert all(not p.endswith("\r") and telegram_length(p) <= limit for p in parts), limit
        assert_lossless(text, parts)


def test_html_measure_counts_escapes() -> None:
    parts = split_message("<b>" * 10, 12, html_length)
    assert all(html_length(p) <= 12 for p in parts) and "".join(parts) == "<b>" * 10
    assert split_message("a&b", 5, html_length) == ["a", "&", "b"]  # "&amp;" alone fills 5


def test_leading_whitespace_at_a_cut_is_dropped() -> None:
    assert split_message(" " * 10 + "abc", 5) == ["abc"]
    assert split_message("ab" + " " * 10 + "cd", 4) == ["ab", "cd"]
    assert split_message(" " * 10, 4) == []


def test_impossible_limit_raises() -> None:
    with pytest.raises(ValueError):
        split_message("<<", 3, html_length)  # "&lt;" is 4 on its own


MIXED = st.lists(st.one_of(
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.sampled_from(["😀", "👍🏽", "\n", "\r\n", " ", "。", "，", "！", "…", "<", "&", ">", ". "]),
), max_size=300).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=MIXED, limit=st.integers(min_value=8, max_value=120), escaped=st.booleans())
def test_parts_fit_and_nothing_is_lost(text: str, limit: int, escaped: bool) -> None:
    measure = html_length if escaped else telegram_length
    parts = split_message(text, limit, measure)
    assert all(measure(p) <= limit for p in parts)
    if measure(text) <= limit:
        assert parts == ([text] if text else [])
    else:
        assert_lossless(text, parts)
