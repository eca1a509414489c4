"""Cut a long answer into Telegram messages (at most 4096 characters each, counted as Telegram does).

    parts = split_message(answer)                                                    # plain text
    parts = split_message(answer, measure=lambda s: telegram_length(html.escape(s, quote=False)))  # HTML mode
    telegram_length("😀")                                                            # 2: UTF-16 code units

Every part has measure(part) <= limit. (Telegram's 4096 counts the text after entity parsing, so measuring
the escaped HTML is on the safe side.) A cut goes, in order of preference, after a sentence end (Chinese
。！？；… or English .!?; before a space or Chinese) with its closing quotes, after a newline, after a space
or a comma (，、,), at a place that does not break a character cluster (emoji with modifiers, combining
accents), and otherwise anywhere — never inside a surrogate pair or a "\\r\\n". A boundary in the second
half of the room left is preferred to one in the first half, so parts are not needlessly short.

Whitespace at a cut is dropped: a part never ends or begins with whitespace where it was cut, because
Telegram rejects blank messages and trims them anyway. Nothing else changes: joining the parts with the
dropped whitespace gives back the text, characters in their order, and no part is empty.
A text that fits is returned as it is ([] for ""). `measure` must not shrink when a part grows
(escaping per character, as html.escape does, is fine).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable

TELEGRAM_LIMIT = 4096
_SENTENCE_ENDS = "。！？；…"
_ASCII_ENDS = ".!?;"  # only before whitespace or Chinese: "3.14" and "e.g" are not ends
_CLOSERS = "”’」』）》】)]\"'"  # a sentence end may be followed by a closing quote or bracket
_SOFT_BREAKS = "，、,：:"
_ZWJ = "\u200d"


def telegram_length(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units, so an emoji outside the BMP counts 2."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clip(text: str, limit: int) -> str:
    """`text`, or its first limit - 1 characters and "…": a quote in a list or a button that must stay short."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def split_message(text: str, limit: int = TELEGRAM_LIMIT, measure: Callable[[str], int] = telegram_length) -> list[str]:
    """Parts of `text`, each with measure(part) <= limit; ValueError when a single character cannot fit."""
    parts: list[str] = []
    rest = text
    while rest:
        fit = _fit(rest, limit, measure)  # measures about 2 * limit characters, never the whole rest
        if fit == len(rest):
            parts.append(rest)
            break
        cut = _best_cut(rest, fit)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if head:  # only a text starting with whitespace can give an empty head
            parts.append(head)
    return parts


def _fit(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The longest prefix length n with measure(text[:n]) <= limit: a galloping, then a binary search."""
    lo, hi = 0, min(len(text), max(limit, 1))
    while hi < len(text) and measure(text[:hi]) <= limit:  # a measure may count some characters as 0
        lo, hi = hi, min(len(text), 2 * hi)
    while lo < hi:  # invariant: text[:lo] fits and the answer is at most hi
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _best_cut(text: str, fit: int) -> int:
    """Where to cut text[:fit]: a boundary in the second half of the room, then in the first half, then a fallback."""
    for rules, low in ((_BOUNDARIES, fit // 2), (_BOUNDARIES, 0), (_FALLBACKS, 0)):
        for rule in rules:
            for i in range(fit, low, -1):  # the latest place wins: parts as long as they may be
                if _allowed(text, i) and rule(text, i):
                    return i
    raise ValueError(f"limit too small: {text[:2]!r} cannot start a part")


def _allowed(text: str, i: int) -> bool:
    """A cut at i keeps "\\r\\n" and surrogate pairs (possible in str from lax decoding) whole."""
    before, after = text[i - 1], text[i]
    return not (before == "\r" and after == "\n") and not ("\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff")


def _sentence_end(text: str, i: int) -> bool:
    j = i - 1
    while j > 0 and text[j] in _CLOSERS:
        j -= 1
    if text[i] in _SENTENCE_ENDS or text[i] in _CLOSERS:  # cut after the whole "……" or "？！」"
        return False
    return text[j] in _SENTENCE_ENDS or (text[j] in _ASCII_ENDS and (text[i].isspace() or not text[i].isascii()))


def _newline(text: str, i: int) -> bool:
    return text[i - 1] == "\n"


def _soft_break(text: str, i: int) -> bool:
    return text[i - 1].isspace() or text[i - 1] in _SOFT_BREAKS


def _cluster_boundary(text: str, i: int) -> bool:
    """Not inside an emoji sequence or before a combining mark (a cheap approximation of grapheme clusters)."""
    before, after = text[i - 1], text[i]
    joins_next = after == _ZWJ or "\ufe00" <= after <= "\ufe0f" or "\U0001f3fb" <= after <= "\U0001f3ff"
    flags = "\U0001f1e6" <= before <= "\U0001f1ff" and "\U0001f1e6" <= after <= "\U0001f1ff"
    return not (joins_next or before == _ZWJ or flags or unicodedata.category(after) in ("Mn", "Mc", "Me"))


def _anywhere(text: str, i: int) -> bool:
    return True


_BOUNDARIES: tuple[Callable[[str, int], bool], ...] = (_sentence_end, _newline, _soft_break)  # worth a shorter part
_FALLBACKS: tuple[Callable[[str, int], bool], ...] = (_cluster_boundary, _anywhere)
