"""Text <-> token ids: jieba words for Chinese, word pieces for English, characters as the fallback.

The only place in Kefu where text becomes ids. Usage:

    tok = Tokenizer.train(texts, max_size=8000, min_freq=2)
    ids = tok.encode("你好，我想退货")
    assert tok.decode(ids) == "你好，我想退货"
    ids, loss_mask = tok.encode_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    tok.save("tokenizer.json"); tok = Tokenizer.load("tokenizer.json")

Pre-tokenisation splits text into pieces whose concatenation is the text itself: runs of Chinese
characters go through jieba, Latin words keep one leading space (" world", as GPT-2 does), digits
stand alone, punctuation and symbols (emoji included) are single pieces. A piece in the vocabulary
is one id; any other piece falls back to its characters. Every character seen in training is in the
vocabulary, so `decode(encode(text)) == text` for any text made of known characters.

Special tokens are never produced from text: a user typing "<|assistant|>" gets characters, not a role.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import jieba

logger = logging.getLogger(__name__)
jieba.setLogLevel(logging.WARNING)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
EVIDENCE = "<|evidence|>"  # a retrieved stored answer in the prompt, which the model may copy from
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SYSTEM, USER, ASSISTANT, END, EVIDENCE)
LEGACY_SPECIAL_TOKENS = SPECIAL_TOKENS[:8]  # versions trained before evidence: still load, take no evidence
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
FORMAT = "kefu-tokenizer/1"
MIN_PROMPT_TOKENS = 4  # <bos>, a role, one token, the assistant opener

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_LATIN = r"A-Za-z\u00c0-\u024f"
_PIECE = re.compile(
    rf"[{_CJK}]+"  # a run of Chinese characters, segmented further by jieba
    rf"| ?[{_LATIN}]+"  # a Latin word with its leading space
    r"|[0-9]"  # digits one by one: phone numbers and prices stay learnable
    rf"| ?[^\s\w]"  # punctuation or a symbol (emoji too), with its leading space
    r"|.",  # anything else, one character at a time (whitespace, other scripts)
    re.DOTALL,
)
_CJK_RUN = re.compile(rf"[{_CJK}]")


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used, or chat input the template cannot encode."""


def split_pieces(text: str) -> list[str]:
    """Cut text into pieces whose concatenation is exactly `text`."""
    pieces: list[str] = []
    for match in _PIECE.finditer(text):
        piece = match.group()
        if _CJK_RUN.match(piece):
            pieces.extend(jieba.lcut(piece, HMM=False))
        else:
            pieces.append(piece)
    return pieces


MAX_CHARS = 8192  # characters in a vocabulary: ~3,500 cover 99.9 % of Chinese text; CrossWOZ's 500 dialogues hold 1,761

class Tokenizer:
    """A vocabulary of special tokens, every training character, and frequent words."""

    def __init__(self, tokens: Sequence[str]) -> None:
        specials = SPECIAL_TOKENS if tuple(tokens[: len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS else LEGACY_SPECIAL_TOKENS
        if tuple(tokens[: len(specials)]) != specials:
            raise TokenizerError("vocabulary must start with the special tokens " + " ".join(SPECIAL_TOKENS))
        if len(set(tokens)) != len(tokens):
            raise TokenizerError("vocabulary has duplicate tokens")
        self.tokens: list[str] = list(tokens)
        self.ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.num_special = len(specials)
        self.evidence_id: int | None = self.ids.get(EVIDENCE)
        self.has_words = any(len(t) > 1 for t in self.tokens[self.num_special :])  # else: one id per character
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (self.ids[t] for t in (PAD, UNK, BOS, EOS))
        self.end_id = self.ids[END]
        self.role_ids = {role: self.ids[tok] for role, tok in ROLE_TOKENS.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end an assistant turn during generation."""
        return frozenset({self.end_id, self.eos_id})

    @classmethod
    def train(cls, texts: Iterable[str], max_size: int = 8000, min_freq: int = 2, words: bool = True) -> Tokenizer:
        """Build a vocabulary: specials, every character seen (the MAX_CHARS most frequent: logged customer text may
        hold tens of thousands of distinct private-use or rare characters, each widening the embedding and the output
        layer; the rest are <unk>), then (with `words`) words by frequency up to `max_size`."""
        counts: Counter[str] = Counter()
        chars: Counter[str] = Counter()
        for text in texts:
            chars.update(text)
            if words:
                counts.update(p for p in split_pieces(text) if len(p) > 1)
        char_tokens = sorted(chars, key=lambda c: (-chars[c], c))[:MAX_CHARS]
        vocab = list(SPECIAL_TOKENS) + [c for c in char_tokens if c not in SPECIAL_TOKENS]
        room = max(0, max_size - len(vocab))
        frequent = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_freq]
        vocab += frequent[:room]
        logger.info("tokenizer: %d specials, %d characters, %d words", len(SPECIAL_TOKENS), len(char_tokens), min(room, len(frequent)))
        return cls(vocab)

    def encode(self, text: str) -> list[int]:
        """Text to ids; unknown words fall back to characters, unknown characters to <unk>."""
        if not self.has_words:  # a character vocabulary: no segmentation needed
            return [self._char_id(ch) for ch in text]
        ids: list[int] = []
        for piece in split_pieces(text):
            piece_id = self.ids.get(piece)
            if piece_id is not None and piece_id >= self.num_special:
                ids.append(piece_id)
            else:
                ids.extend(self._char_id(ch) for ch in piece)
        return ids

    def _char_id(self, ch: str) -> int:
        char_id = self.ids.get(ch)
        return char_id if char_id is not None and char_id >= self.num_special else self.unk_id

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids to text; special tokens are dropped unless `skip_special` is False."""
        parts = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise TokenizerError(f"token id {i} outside the vocabulary of {len(self.tokens)}")
            if i >= self.num_special or not skip_special:
                parts.append(self.tokens[i])
        return "".join(parts)

    def encode_chat(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """`<bos>` then each turn as role + text + `<|end|>`; the mask is 1 on assistant text and its end only."""
        ids, mask = [self.bos_id], [0]
        for message in messages:
            turn = self._encode_turn(message)
            ids += turn
            is_assistant = message["role"] == "assistant"
            mask += [0] + [int(is_assistant)] * (len(turn) - 1)
        return ids, mask

    def encode_prompt(self, messages: Sequence[dict], max_tokens: int | None = None, evidence: Sequence[str] = (),
                      max_history: int | None = None, max_evidence_tokens: int = 96) -> list[int]:
        """The ids a model continues to answer `messages`: the chat template plus an open assistant turn.

        `evidence` (retrieved answers, best first) goes just before the newest turn, each as `<|evidence|>` + at
        most `max_evidence_tokens` + `<|end|>`; a tokenizer without that token takes none. `max_history` keeps
        at most that many turns before the newest one (system turns are always kept). With `max_tokens`, the
        newest turn comes first: if it alone is too long, only its role and its end are kept. System turns take
        what is left (one too long keeps its beginning), then evidence (the weakest dropped first), then the
        older turns, newest first. `<bos>` and the opener are never cut.
        """
        turns = [self._encode_turn(m) for m in messages]
        is_system = [m["role"] == "system" for m in messages]
        if max_history is not None and turns:
            dialog = [i for i in range(len(turns) - 1) if not is_system[i]]
            dropped = set(dialog[: max(0, len(dialog) - max_history)])
            turns = [t for i, t in enumerate(turns) if i not in dropped]
            is_system = [s for i, s in enumerate(is_system) if i not in dropped]
        evidence_turns = [self.encode_evidence(text, max_evidence_tokens) for text in evidence] if self.evidence_id is not None else []
        opener = [self.role_ids["assistant"]]
        if max_tokens is None:
            return [self.bos_id] + [i for turn in _with_evidence(turns, evidence_turns) for i in turn] + opener
        if max_tokens < MIN_PROMPT_TOKENS:
            raise TokenizerError(f"a prompt needs at least {MIN_PROMPT_TOKENS} tokens, got max_tokens={max_tokens}")
        dialog = [t for t, system in zip(turns, is_system) if not system]
        budget = max_tokens - 1 - len(opener)
        kept = [_tail(dialog[-1], budget)] if dialog else []  # newest first; the question outranks everything
        budget -= sum(map(len, kept))
        kept_system = _head_turns([t for t, system in zip(turns, is_system) if system], budget, self.end_id)
        budget -= sum(map(len, kept_system))
        while evidence_turns and sum(map(len, evidence_turns)) > budget:  # evidence outranks older turns
            evidence_turns.pop()
        budget -= sum(map(len, evidence_turns))
        for turn in reversed(dialog[:-1]):
            if len(turn) > budget:
                break
            kept.append(turn)
            budget -= len(turn)
        body = [i for turn in _with_evidence(kept_system + kept[::-1], evidence_turns) for i in turn]
        return [self.bos_id] + body + opener

    def encode_evidence(self, text: str, max_tokens: int) -> list[int]:
        return [self.evidence_id] + self.encode(text)[:max_tokens] + [self.end_id]

    def _encode_turn(self, message: dict) -> list[int]:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLE_TOKENS:
            raise TokenizerError(f"unknown role {role!r}; expected one of {', '.join(ROLE_TOKENS)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise TokenizerError(f"message content must be a string, got {type(content).__name__}")
        return [self.role_ids[role]] + self.encode(content) + [self.end_id]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, "tokens": self.tokens}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tokens"), list):
            raise TokenizerError(f"{path} is not a {FORMAT} file")
        return cls(data["tokens"])


def _tail(turn: list[int], budget: int) -> list[int]:
    """A turn within `budget`: whole, or its role token and its end (a long message ends with its question)."""
    return turn if len(turn) <= budget else turn[:1] + turn[len(turn) - (budget - 1) :]


def _head_turns(turns: list[list[int]], budget: int, end_id: int) -> list[list[int]]:
    """System turns within `budget`, in order: the first that does not fit keeps its role, its beginning (where
    instructions say who the assistant is) and its end token; the rest are dropped."""
    kept: list[list[int]] = []
    for turn in turns:
        if len(turn) > budget:
            if budget >= 3:  # role, one token, end: less would be an empty turn
                kept.append(turn[: budget - 1] + [end_id])
            break
        kept.append(turn)
        budget -= len(turn)
    return kept


def _with_evidence(turns: list[list[int]], evidence: list[list[int]]) -> list[list[int]]:
    """The turns with the evidence inserted before the newest one (weakest evidence first, the best nearest)."""
    if not turns:
        return evidence[::-1]
    return turns[:-1] + evidence[::-1] + turns[-1:]
