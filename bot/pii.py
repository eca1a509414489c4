"""Personal data out of text before it is kept as training data: phone numbers, e-mail addresses,
resident ID numbers and bank card numbers become placeholders.

    scrub("我的手机是13812345678，请回电")      # "我的手机是[PHONE]，请回电"
    scrub("mail zhang.san+shop@example.com")   # "mail [EMAIL]"
    find_pii("卡号 6222 0212 3456 7894")         # [("[CARD]", "6222 0212 3456 7894")] when Luhn-valid

The text is NFKC-normalized first (full-width digits, ＠ and ． become ASCII) and the normalized text
is what comes back. Numbers are matched only as whole digit runs: a lookaround on [0-9] rather than
\\b, because Chinese characters are word characters and "手机13812345678" has no \\b before the 1.
IDs and cards must pass their check digits, so order numbers, prices, dates and the 400 hotline stay.
Kinds are tried in a fixed order (e-mail, ID, phone, card) on the text left by the previous kind:
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
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
# 18 characters: 6-digit region, YYYYMMDD, 3-digit sequence, check character; or 15 digits with YYMMDD.
_ID = re.compile(r"(?<![0-9])(?:[1-9][0-9]{5}(?:18|19|20)[0-9]{9}[0-9Xx]|[1-9][0-9]{14})(?![0-9])")
# 1[3-9]x xxxx xxxx, contiguous or grouped 3-4-4 by spaces or dashes, after an optional +86 / 0086 / 86.
_PHONE = re.compile(r"(?<![0-9])(?:(?:\+|00)?86[ -]?)?1[3-9][0-9](?:[0-9]{8}|[ -][0-9]{4}[ -][0-9]{4})(?![0-9])")
# A run of digit groups (3+ digits each, as cards are printed) joined by one space or dash.
_GROUPS = re.compile(r"(?<![0-9])[0-9]{3,}(?:[ -][0-9]{3,})*(?![0-9])")
_DIGITS = re.compile(r"[0-9]+")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # GB 11643: the check character for (weighted sum mod 11)
_CARD_LENGTHS = range(13, 20)
_MAX_CARD_GROUPS = 6  # 19 digits in groups of 3 or more


def scrub(text: str) -> str:
    """The NFKC-normalized text with every phone, e-mail, ID and card number replaced by its placeholder."""
    return _scan(text)[0]


def find_pii(text: str) -> list[tuple[str, str]]:
    """(placeholder, matched text of the normalized input) for each piece of personal data, grouped by kind."""
    return _scan(text)[1]


def _scan(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Passes until nothing changes: a replacement can expose a number ("…807X13000000000" is an ID once the
    phone after it is gone), and scrub(scrub(x)) must equal scrub(x). Each pass removes digits, so it ends."""
    found: list[tuple[str, str]] = []
    text, seen = unicodedata.normalize("NFKC", text), -1
    while len(found) != seen:
        seen = len(found)
        text = _one_pass(text, found)
    return text, found


def _one_pass(text: str, found: list[tuple[str, str]]) -> str:
    for kind, pattern, valid in _SIMPLE:
        text = pattern.sub(partial(_keep_or_replace, kind=kind, valid=valid, found=found), text)
    return _GROUPS.sub(lambda m: _replace_cards(m.group(), found), text)


def _keep_or_replace(match: re.Match[str], kind: str, valid: Callable[[str], bool], found: list[tuple[str, str]]) -> str:
    matched = match.group()
    if not valid(matched):
        return matched
    found.append((kind, matched))
    return kind


def valid_id(number: str) -> bool:
    """A resident ID number: 18 characters with a GB 11643 check character, or the old 15 digits; the birth date must be real."""
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


def _replace_cards(run: str, found: list[tuple[str, str]]) -> str:
    """Replace the card numbers in a run of digit groups; other groups (an amount, an order number) stay."""
    groups = [m.span() for m in _DIGITS.finditer(run)]
    out, pos, i = [], 0, 0
    while i < len(groups):
        j = _card_end(run, groups, i)
        if j is None:
            i += 1
            continue
        start, end = groups[i][0], groups[j - 1][1]
        out += [run[pos:start], CARD]
        found.append((CARD, run[start:end]))
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
)
