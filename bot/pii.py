"""Personal data out of text before it is kept as training data: phone numbers, e-mail addresses,
resident ID numbers and bank card numbers become placeholders.

    scrub("我的手机是13812345678，请回电")      # "我的手机是[PHONE]，请回电"
    scrub("mail zhang.san+shop@example.com")   # "mail [EMAIL]"
    find_pii("卡号 4111 1111 1111 1111")         # [("[CARD]", "4111 1111 1111 1111")]: Luhn-valid

Matching runs on the NFKC form, so full-width digits, ＠ and ． count as ASCII ("１３８…", "ｌｉ＠ｘ．ｃｎ"),
but the text comes back as written, with only the personal data replaced: training data keeps its
full-width ，？！ (NFKC would turn them into ASCII). Numbers are matched only as whole digit runs: a
lookaround on [0-9] rather than \\b, because Chinese characters are word characters and
"手机13812345678" has no \\b before the 1.
IDs and cards must pass their check digits, so order numbers, prices, dates and the 400 hotline stay.
Kinds are tried in a fixed order (e-mail, ID, phone, card), each after the matches of the previous ones:
"13812345678@qq.com" is one e-mail, and an 18-digit ID is never mistaken for a card. Card digits come
in groups of 3 or more (4-4-4-4, 4-6-5, 6-13 ...) so that dates and short numbers are not glued together.
A birth date must lie between 1880 and today.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import date
from functools import partial

PHONE, EMAIL, ID, CARD = "[PHONE]", "[EMAIL]", "[ID]", "[CARD]"
PII_KINDS = (PHONE, EMAIL, ID, CARD)

# RFC 5321 lengths (64 for the local part, 63 a label) also keep the scan linear on long runs of letters.
# A Chinese keyboard's 。 for a dot in the domain ("zhangsan@qq。com") is a dot.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?[.。])+[A-Za-z]{2,63}")
# 18 characters: 6-digit region, YYYYMMDD, 3-digit sequence, check character, grouped any way by single spaces, dashes
# or dots ("110101 19900307 1233", "1101 0519 4912 3100 2X": the check character and the birth date tell an ID from
# other numbers); or 15 digits with YYMMDD.
_ID = re.compile(r"(?<![0-9])(?:[1-9](?:[ .-]?[0-9]){16}[ .-]?[0-9Xx]|[1-9][0-9]{14})(?![0-9])")
_ID_SEPARATORS = re.compile(r"[ .-]")
# What may stand between a phone number's digits: a space, dot, dash, tilde or bracket, and the other dashes people
# paste (U+2010-2014, the minus sign) that NFKC leaves as they are. (Invisible characters — zero-width spaces and
# joiners, direction marks, a soft hyphen — are taken out before any pattern looks: `_normalize`.)
_SEP = r"[ .()~\-\u2010-\u2014\u2212]"
# 1[3-9]x xxxx xxxx, contiguous or grouped 3-4-4 or 4-3-4 by a space, dash or dot at either or both places
# ("138.1234.5678", "138 12345678", "1381 234 5678"), after an optional +86 / 0086 / 86.
_PHONE = re.compile(rf"(?<![0-9])(?:(?:\+|00)?86[ -]?)?1[3-9][0-9](?:{_SEP}?[0-9]{{4}}|[0-9]{_SEP}?[0-9]{{3}}){_SEP}?[0-9]{{4}}(?![0-9])")
# Numbers from elsewhere: an international one after "+" (8 to 15 digits, grouped any way: "+1 415 555 0134", "+44 7700
# 900123", "+86 (138) 1234 5678"); a North American one with its area code in brackets ("(415) 555-0134"); any of 7 to
# 15 digits after a word that says it is a phone number and a few words more ("call me at 07700 900123", "电话 020-8888
# 1234", "my phone number is 415-555-0134", "座机 021 6234 5678"), but not a 400 / 800 service line, which is the shop's;
# and a mobile number in Chinese numerals, grouped or not (一三八一二三四五六七八, 一三八 一二三四 五六七八).
_PHONE_ABROAD = re.compile(rf"(?<![0-9A-Za-z+])\+[1-9](?:{_SEP}{{0,2}}[0-9]){{7,14}}(?![0-9])")
_PHONE_BRACKETED = re.compile(r"(?<![0-9])\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .-]?[0-9]{4}(?![0-9])")
_PHONE_WORDS = r"电话|手机|座机|固话|联系方式|致电|来电|tel\b|phone|mobile|cell\b|call me|call us|text me|reach me|whatsapp|my number"
# between the word and the number: punctuation, spaces, and the few words that lead to a number ("号码是", "number is",
# "打给我", "at"); not any Chinese word ("我用手机下单的，订单号 20240307123" is an order number)
_PHONE_FILLER = r"(?:[^0-9A-Za-z\u3400-\u9fff]|[是为号码的我你打拨给到请即：]|(?:number|no|num|is|at|on|me)\b)"
_PHONE_SAID = re.compile(rf"(?<!\[)(?:{_PHONE_WORDS}){_PHONE_FILLER}{{0,8}}?"
                         rf"(?P<number>(?!400|800)[0-9](?:(?:{_SEP}|/){{0,2}}[0-9]){{6,14}})(?![0-9])", re.IGNORECASE)
_NUMERAL = "[零〇一二三四五六七八九幺]"  # 幺: a spoken one
_PHONE_NUMERALS = re.compile(rf"(?<!{_NUMERAL})一[三四五六七八九](?:[ -]?{_NUMERAL}){{9}}(?!{_NUMERAL})")
# A run of digit groups (3+ digits each, as cards are printed) joined by one or two spaces, dashes, dots or slashes, or a
# comma (a full-width one is a comma once normalized).
_GROUPS = re.compile(r"(?<![0-9])[0-9]{3,}(?:(?:[ ./-]{1,2}|,)[0-9]{3,})*(?![0-9])")
_DIGITS = re.compile(r"[0-9]+")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # GB 11643: the check character for (weighted sum mod 11)
_CARD_LENGTHS = range(13, 20)
_MAX_CARD_GROUPS = 6  # 19 digits in groups of 3 or more
_MASK = "\0"  # stands for a match already found: not a digit, not part of an e-mail


_MAX_PASSES = 4


def scrub(text: str) -> str:
    """`text` with every phone, e-mail, ID and card number replaced by its placeholder.

    Repeated until nothing changes (at most _MAX_PASSES): a match can free a neighbour that only then is a
    number of its own ("0000000000000¼a@b.cn": the ¼ is 1⁄4, so "00000000000001" is no card until the e-mail
    "4a@b.cn" takes the ¼ away), and scrubbed text must scrub to itself."""
    for _ in range(_MAX_PASSES):
        out, pos = [], 0
        for kind, start, end in _find(text):
            out += [text[pos:start], kind]
            pos = end
        if not out:
            return text
        text = "".join(out) + text[pos:]
    return text


def find_pii(text: str) -> list[tuple[str, str]]:
    """(placeholder, text as written) for each piece of personal data, in order."""
    return [(kind, text[start:end]) for kind, start, end in _find(text)]


def _find(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) in `text`, in order and not overlapping."""
    normal, origin = _normalize(text)
    spans: list[tuple[str, int, int]] = []
    _scan(normal, spans)
    found, pos = [], 0
    for kind, start, end in sorted(spans, key=lambda s: s[1]):
        start, end = max(origin[start], pos), origin[end - 1] + 1  # a match may end inside "⒏" (8 and a dot)
        if start < end:
            found.append((kind, start, end))
            pos = end
    return found


def _normalize(text: str) -> tuple[str, list[int]]:
    """NFKC character by character (what the patterns need: digits, letters, @ . + -), without invisible formatting
    characters (Unicode's Cf: zero-width spaces and joiners, direction marks, a soft hyphen — "138\u200b1234\u200b5678"
    went through whole), and for each normalized character the index of the character it came from."""
    pieces, origin = [], []
    for i, ch in enumerate(text):
        piece = "" if unicodedata.category(ch) == "Cf" else unicodedata.normalize("NFKC", ch)
        pieces.append(piece)
        origin += [i] * len(piece)
    return "".join(pieces), origin


def _scan(text: str, spans: list[tuple[str, int, int]]) -> None:
    """Passes until nothing is found. A match is masked with NULs of its length, so offsets stay those of
    the normalized text and it reads as a non-digit to what comes next; a mask can expose a number
    ("…807X13000000000" is an ID once the phone after it is gone), and scrub(scrub(x)) must equal scrub(x).
    A mask is never matched again, so the passes end."""
    seen = -1
    while len(spans) != seen:
        seen = len(spans)
        for kind, pattern, valid in _SIMPLE:
            text = pattern.sub(partial(_mask_valid, kind=kind, valid=valid, spans=spans), text)
        text = _GROUPS.sub(partial(_mask_cards, spans=spans), text)


def _mask_valid(match: re.Match[str], kind: str, valid: Callable[[str], bool], spans: list[tuple[str, int, int]]) -> str:
    """The match masked if valid; of a pattern with a group called "number", only that group (the words before stay)."""
    part = "number" if "number" in match.re.groupindex else 0
    if not valid(match.group(part)):
        return match.group()
    start, end = match.span(part)
    spans.append((kind, start, end))
    head, tail = match.start(), match.group()
    return tail[: start - head] + _MASK * (end - start) + tail[end - head :]


def valid_id(number: str) -> bool:
    """A resident ID number: 18 characters with a GB 11643 check character, or the old 15 digits; the birth date must be real."""
    number = _ID_SEPARATORS.sub("", number)
    if len(number) == 15:
        return _plausible_birth("19" + number[6:12])
    digits = number[:17]
    if not digits.isdigit() or number[17].upper() != _ID_CHECK[sum(int(d) * w for d, w in zip(digits, _ID_WEIGHTS)) % 11]:
        return False
    return _plausible_birth(number[6:14])


def _plausible_birth(yyyymmdd: str) -> bool:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return date(1880, 1, 1) <= born <= date.today()


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every bank card number carries (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _mask_cards(match: re.Match[str], spans: list[tuple[str, int, int]]) -> str:
    """Mask the card numbers in a run of digit groups; other groups (an amount, an order number) stay."""
    run, offset = match.group(), match.start()
    groups = [m.span() for m in _DIGITS.finditer(run)]
    out, pos, i = [], 0, 0
    while i < len(groups):
        j = _card_end(run, groups, i)
        if j is None:
            i += 1
            continue
        start, end = groups[i][0], groups[j - 1][1]
        spans.append((CARD, offset + start, offset + end))
        out += [run[pos:start], _MASK * (end - start)]
        pos, i = end, j
    return "".join(out) + run[pos:]


def _card_end(run: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The end (exclusive group index) of the longest Luhn-valid card starting at group `first`, if any."""
    for last in range(min(len(groups), first + _MAX_CARD_GROUPS), first, -1):
        digits = "".join(run[a:b] for a, b in groups[first:last])
        if len(digits) in _CARD_LENGTHS and luhn_valid(digits):
            return last
    return None


def _always(_: str) -> bool:
    return True


_SIMPLE: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    (EMAIL, _EMAIL, _always),
    (ID, _ID, valid_id),
    (PHONE, _PHONE, _always),
    (PHONE, _PHONE_ABROAD, _always),
    (PHONE, _PHONE_BRACKETED, _always),
    (PHONE, _PHONE_SAID, _always),
    (PHONE, _PHONE_NUMERALS, _always),
)
