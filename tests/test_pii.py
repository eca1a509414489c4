"""bot/pii.py: phones, e-mails, resident IDs and bank cards become placeholders; look-alikes stay."""
from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.pii import CARD, EMAIL, ID, PHONE, PII_KINDS, find_pii, luhn_valid, scrub, valid_id


def id_check(first17: str) -> str:
    """GB 11643 check character, written independently of bot/pii.py: weights 2^(17-i) mod 11."""
    total = sum(int(d) * pow(2, 17 - i, 11) for i, d in enumerate(first17))
    return "0123456789X"[(12 - total % 11) % 11]


def make_id(region: str = "110105", born: str = "19900307", seq: str = "123") -> str:
    return region + born + seq + id_check(region + born + seq)


def luhn_complete(body: str) -> str:
    """body + the digit that makes it Luhn-valid."""
    for check in "0123456789":
        digits = [int(d) for d in reversed(body + check)]
        if sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0:
            return body + check
    raise AssertionError("unreachable")


CARD16 = luhn_complete("622202123456789")
CARD19 = luhn_complete("621700001234567890")
ID_X = next(make_id(seq=f"{n:03d}") for n in range(1000) if make_id(seq=f"{n:03d}").endswith("X"))


def grouped(digits: str, sep: str = " ") -> str:
    """Groups of four as printed on cards; a tail shorter than three joins the group before it."""
    groups = [digits[i:i + 4] for i in range(0, len(digits), 4)]
    if len(groups[-1]) < 3:
        groups[-2:] = [groups[-2] + groups[-1]]
    return sep.join(groups)


def test_fixtures_are_what_they_claim() -> None:
    assert luhn_valid(CARD16) and luhn_valid(CARD19) and len(CARD16) == 16 and len(CARD19) == 19
    assert valid_id(make_id()) and valid_id(ID_X) and valid_id(ID_X.lower())
    assert PII_KINDS == (PHONE, EMAIL, ID, CARD)


@pytest.mark.parametrize("text, expected", [
    ("我的手机是13812345678，请回电", "我的手机是[PHONE]，请回电"),
    ("call me at +86 138-1234-5678", "call me at [PHONE]"),
    ("Call me on 0086 139 1234 5678 tomorrow", "Call me on [PHONE] tomorrow"),
    ("电话8615912345678。", "电话[PHONE]。"),
    ("手机１９９１２３４５６７８！", "手机[PHONE]！"),  # full-width digits match; the ！ stays full-width
    ("电话+86-17712345678或者座机", "电话[PHONE]或者座机"),
    ("手机138.1234.5678，谢谢", "手机[PHONE]，谢谢"),  # dots, as some write it
    ("call 138 12345678 or 1391234 5678", "call [PHONE] or [PHONE]"),  # one separator, at either place
    ("call me at (415) 555-0134", "call me at [PHONE]"),  # numbers from elsewhere
    ("whatsapp +1 415 555 0134 or +44 7700 900123", "whatsapp [PHONE] or [PHONE]"),
    ("手机 +86 (138) 1234 5678", "手机 [PHONE]"),
    ("call me at 07700 900123 after six", "call me at [PHONE] after six"),  # said to be a phone number
    ("联系电话：020-8888 1234", "联系电话：[PHONE]"),
    ("我手机一三八一二三四五六七八", "我手机[PHONE]"),  # in Chinese numerals
    ("我电话是一三八 一二三四 五六七八", "我电话是[PHONE]"),  # ... grouped
    # said to be a phone in a few more words, or with dashes pasted from elsewhere (all kept verbatim before)
    ("My phone number is 415-555-0134", "My phone number is [PHONE]"),
    ("please call my mobile number 07700 900123", "please call my mobile number [PHONE]"),
    ("my cell is 415 555 0134", "my cell is [PHONE]"),
    ("reach me at 4155550134", "reach me at [PHONE]"),
    ("座机 021-62345678，联系方式：021 6234 5678", "座机 [PHONE]，联系方式：[PHONE]"),
    ("whatsapp +1\u2011415\u2011555\u20110134", "whatsapp [PHONE]"),
    ("mobile: 138/1234/5678", "mobile: [PHONE]"),
    ("订单号是 20261203123456，请拨 400-123-4567", "订单号是 20261203123456，请拨 400-123-4567"),  # no phone: kept
])
def test_phones(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("邮箱 zhang.san+shop@mail.example.com.cn", "邮箱 [EMAIL]"),
    ("Write to John.Doe@Example.CO.UK please.", "Write to [EMAIL] please."),
    ("我的邮箱是ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ。", "我的邮箱是[EMAIL]。"),
    ("QQ邮箱13812345678@qq.com", "QQ邮箱[EMAIL]"),  # one e-mail, not a phone with a tail
])
def test_emails(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_resident_ids() -> None:
    assert scrub(f"身份证号{make_id()}，谢谢") == "身份证号[ID]，谢谢"
    assert scrub(f"my ID is {ID_X.lower()}.") == "my ID is [ID]."
    assert scrub(f"ID {make_id(born='20160229')} ok") == "ID [ID] ok"
    assert scrub("旧身份证110105900307123") == "旧身份证[ID]"  # 15 digits, born 1990-03-07
    assert find_pii(f"号码{ID_X}") == [(ID, ID_X)]
    region, born, rest = make_id()[:6], make_id()[6:14], make_id()[14:]
    for sep in (" ", "-", "."):  # grouped 6-8-4, as some write it
        assert scrub(f"身份证 {region}{sep}{born}{sep}{rest} 谢谢") == "身份证 [ID] 谢谢"
    whole = make_id()  # and in fours, or 6-4-4-4 (kept verbatim before)
    for grouped_id in (" ".join(whole[i:i + 4] for i in range(0, 18, 4)), "-".join((whole[:6], whole[6:10], whole[10:14], whole[14:]))):
        assert scrub(f"身份证 {grouped_id} 谢谢") == "身份证 [ID] 谢谢", grouped_id


def test_bank_cards() -> None:
    for card in (CARD16, CARD19, grouped(CARD16), grouped(CARD19), grouped(CARD16, "-")):
        assert scrub(f"卡号{card}，户名张三") == "卡号[CARD]，户名张三", card
        assert scrub(f"my card is {card}.") == "my card is [CARD].", card
    assert scrub(f"卡号 {grouped(CARD16)} 金额 100") == "卡号 [CARD] 金额 100"
    assert scrub(f"{CARD16} 100元") == "[CARD] 100元"  # the amount is not glued onto the card
    for sep in (".", "/", "  ", "，"):  # other ways of writing the groups
        assert scrub(f"卡号{grouped(CARD16, sep)}，谢谢") == "卡号[CARD]，谢谢", sep


@pytest.mark.parametrize("text", [
    "客服热线 400-820-6688，欢迎来电",
    "Call 400-820-6688 for help",
    "这台手机¥1999，包邮",
    "It costs ¥1999.",
    "活动在2026-11-28开始",
    "订单号 202611281234",
    "客服电话 400-820-6688，phone 800-820-8820",  # the shop's service lines, even after a word for phone
    "It costs 1,299 yuan; version 1.2.3; IP 192.168.100.200; +100 积分",
    "没有个人信息的普通句子。",
    "",
])
def test_look_alikes_stay(text: str) -> None:
    assert scrub(text) == text
    assert find_pii(text) == []


def test_text_comes_back_as_written() -> None:
    text = "您好！请问１９９９元的（黑色）还有吗？ＯＫ，谢谢。"  # NFKC would make ！（）？， and ＯＫ ASCII
    assert scrub(text) == text
    assert find_pii("邮箱ｌｉ＠ｘ．ｃｎ，电话１３８ １２３４ ５６７８") == [(EMAIL, "ｌｉ＠ｘ．ｃｎ"), (PHONE, "１３８ １２３４ ５６７８")]


def test_failed_checks_stay() -> None:
    good = make_id()
    bad_id = next(b for b in (good[:17] + c for c in "0123456789X") if b != good and not luhn_valid(b))
    bad_card = CARD16[:15] + str((int(CARD16[15]) + 1) % 10)
    bad_date = next(b + id_check(b) for b in (f"11010519901332{n:03d}" for n in range(1000)) if not luhn_valid(b + id_check(b)))
    for text in (f"订单{bad_id}", f"order {bad_card}", f"单号{bad_date}"):
        assert scrub(text) == text


def test_digits_inside_longer_runs_stay() -> None:
    for text in (f"流水号99{make_id()[:17]}7", f"ref 1234{CARD16}00", "单号3813812345678123456789", f"x{CARD19}0000y"):
        assert scrub(text) == text, text


def test_find_pii_reports_kinds() -> None:
    text = f"手机13812345678 邮箱 a@b.cn 卡 {CARD16} 证 {make_id()}"
    assert find_pii(text) == [(PHONE, "13812345678"), (EMAIL, "a@b.cn"), (CARD, CARD16), (ID, make_id())]  # in text order


# -- properties -------------------------------------------------------------------------------------------

SURROUNDING = st.text(st.one_of(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                                st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                st.sampled_from("，。！？：；（）\n")), max_size=30)


@st.composite
def phones(draw: st.DrawFn) -> str:
    number = "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9, max_size=9))
    sep = draw(st.sampled_from(["", " ", "-"]))
    body = number if not sep else f"{number[:3]}{sep}{number[3:7]}{sep}{number[7:]}"
    return draw(st.sampled_from(["", "+86", "+86 ", "0086", "86", "86-"])) + body


@st.composite
def ids(draw: st.DrawFn) -> str:
    region = draw(st.sampled_from("123456789")) + draw(st.text("0123456789", min_size=5, max_size=5))
    born = draw(st.dates(date(1900, 1, 1), date(2024, 12, 31))).strftime("%Y%m%d")
    number = make_id(region, born, draw(st.text("0123456789", min_size=3, max_size=3)))
    return number.lower() if draw(st.booleans()) else number


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from("3456")) + draw(st.text("0123456789", min_size=11, max_size=17))
    return grouped(luhn_complete(body), draw(st.sampled_from([" ", "-"]))) if draw(st.booleans()) else luhn_complete(body)


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in text)


@settings(max_examples=150, deadline=None)
@given(before=SURROUNDING, pii=st.one_of(phones(), ids(), cards()), after=SURROUNDING, wide=st.booleans())
def test_generated_pii_never_survives(before: str, pii: str, after: str, wide: bool) -> None:
    before, after = before.rstrip("0123456789"), after.lstrip("0123456789")  # a longer digit run is another number
    out = scrub(before + (full_width(pii) if wide else pii) + after)
    assert pii not in out and full_width(pii) not in out and any(kind in out for kind in PII_KINDS)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(SURROUNDING, phones(), ids(), cards(), st.just("a.b+c@mail.example.cn"), st.text(max_size=10)), max_size=6))
def test_scrub_is_idempotent(pieces: list[str]) -> None:
    once = scrub("".join(pieces))
    assert scrub(once) == once


def test_a_number_freed_by_another_match_is_scrubbed_too():
    """¼ is 1⁄4 in NFKC: the e-mail takes it, and only then are the 13 zeros a Luhn-valid card of their own."""
    assert scrub("0000000000000¼a.b+c@mail.example.cn") == "[CARD][EMAIL]"


@pytest.mark.parametrize("mark", ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\xad"])
def test_invisible_characters_inside_a_number_do_not_hide_it(mark: str) -> None:
    """Zero-width spaces and joiners, direction marks, a word joiner, a BOM, a soft hyphen: NFKC leaves them, the
    patterns did not allow them between digits, and the numbers went into the log whole."""
    card = mark.join(grouped(CARD16).split())
    assert scrub(f"我的手机138{mark}1234{mark}5678") == "我的手机[PHONE]"
    assert scrub(f"身份证{make_id()[:14]}{mark}{make_id()[14:]}") == "身份证[ID]"
    assert scrub(f"卡号 {card} 谢谢") == "卡号 [CARD] 谢谢"
    assert scrub(f"邮箱 zhang{mark}san@example.com") == "邮箱 [EMAIL]"


@pytest.mark.parametrize("text, expected", [
    ("号码 1381 234 5678", "号码 [PHONE]"),  # grouped 4-3-4
    ("tel 138\u22121234\u22125678", "tel [PHONE]"),  # the minus sign
    ("打138～1234～5678", "打[PHONE]"),  # a full-width tilde
    ("邮箱 zhangsan@qq。com", "邮箱 [EMAIL]"),  # a Chinese keyboard's 。 for the dot
    ("我用手机下单的，订单号 20240307123", "我用手机下单的，订单号 20240307123"),  # an order number after other words
    ("我的电话打给我 13812345678", "我的电话打给我 [PHONE]"),
])
def test_more_ways_people_write_them(text: str, expected: str) -> None:
    assert scrub(text) == expected
