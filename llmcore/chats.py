"""The chat-JSONL contract (ARCHITECTURE.md), torch-free: what the bot writes and llmcore trains on.

    convs, skipped = read_conversations(["a.chat.jsonl"])          # DataError naming file:line on bad input
    write_conversations(path, convs)                                # and back
    train, val = split_conversations(convs, val_fraction=0.1, seed=0)

Each line is `{"messages": [{"role": ..., "content": ...}, ...], "meta": {...}}`. As in OpenAI's fine-tuning
format, an assistant message with `"weight": 0` is context only: it is neither learned nor retrieved (the
earlier turns of a logged chat, which may be fallbacks).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmcore.tokenizer import ROLE_TOKENS

DEMO_DATA = Path(__file__).parent / "data" / "demo_faq.chat.jsonl"  # the demo shop FAQ: default training data
MAX_LINE_BYTES = 1 << 20


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and line."""


@dataclass
class Conversation:
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    origin: str = ""  # "file:line"


def parse_conversation(line: str) -> Conversation:
    """One JSONL line to a Conversation; ValueError saying what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # [[[[…]]]] thousands deep: a FAQ import answered "something went wrong" (console: a 500)
        raise ValueError("nested too deeply to be a conversation") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages = data["messages"]
    if not messages:
        raise ValueError('"messages" is empty')
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(f"message {n} is not an object")
        if message.get("role") not in ROLE_TOKENS:
            raise ValueError(f"message {n} has unknown role {message.get('role')!r} (expected {', '.join(ROLE_TOKENS)})")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"message {n} has no text content")
        try:
            message["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"message {n} contains invalid Unicode (a lone surrogate)") from None
        if message.get("weight", 1) not in (0, 1) or (message["role"] != "assistant" and "weight" in message):
            raise ValueError(f"message {n}: weight is 0 or 1, on assistant messages only")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        raise ValueError("conversation has no assistant turn to learn from")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return Conversation([{"role": m["role"], "content": m["content"], **({"weight": 0} if m.get("weight", 1) == 0 else {})}
                         for m in messages], meta)


def read_conversations(paths: Sequence[str | Path], skip_bad: bool = False) -> tuple[list[Conversation], int]:
    """All conversations of all files, and how many bad lines were skipped (only with `skip_bad`)."""
    conversations: list[Conversation] = []
    skipped = 0
    for path in map(Path, paths):
        found = 0
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise DataError(f"{path}: cannot open ({exc.strerror})") from None
        with handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
                    if not line.strip():
                        continue
                    if len(raw) > MAX_LINE_BYTES:
                        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                    conversation = parse_conversation(line)
                except (UnicodeDecodeError, ValueError) as exc:
                    if not skip_bad:
                        raise DataError(f"{path}:{lineno}: {exc}") from None
                    skipped += 1
                    continue
                conversation.origin = f"{path}:{lineno}"
                conversations.append(conversation)
                found += 1
        if not found and not skip_bad:
            raise DataError(f"{path}: no conversations in file")
    if not conversations:
        raise DataError("no usable conversations in " + ", ".join(map(str, paths)))
    return conversations, skipped


def write_conversations(path: Path, conversations: Sequence[Conversation]) -> None:
    path.write_text("".join(json.dumps({"messages": c.messages, **({"meta": c.meta} if c.meta else {})}, ensure_ascii=False) + "\n"
                            for c in conversations), encoding="utf-8")


def data_sha256(paths: Sequence[str | Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _rank(seed: int, conversation: Conversation) -> bytes:
    content = json.dumps(conversation.messages, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), key=str(seed).encode()[:64], digest_size=16).digest()


def fingerprint(conversation: Conversation) -> bytes:
    """8 bytes that stand for the conversation's messages (not its meta): the same text gives the same fingerprint in
    any file. A version keeps those of the conversations it trained on (llmcore.registry.TRAINED)."""
    content = json.dumps(conversation.messages, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=FINGERPRINT_BYTES).digest()


FINGERPRINT_BYTES = 8


def write_fingerprints(path: Path, conversations: Sequence[Conversation]) -> None:
    path.write_bytes(b"".join(sorted({fingerprint(c) for c in conversations})))


def not_in(conversations: Sequence[Conversation], fingerprints: Path) -> list[Conversation]:
    """Those of `conversations` whose fingerprint is not in the file (write_fingerprints); all of them without one."""
    if not fingerprints.is_file():
        return list(conversations)
    data, n = fingerprints.read_bytes(), FINGERPRINT_BYTES
    seen = {data[i : i + n] for i in range(0, len(data) - len(data) % n, n)}
    return [c for c in conversations if fingerprint(c) not in seen]


def split_conversations(conversations: Sequence[Conversation], val_fraction: float,
                        seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Seeded split by whole conversation; with a fraction > 0, at least one on each side when there are two or more.
    Conversations marked `"meta": {"pin": true}` (an operator's answer) are always trained on, never held out.

    Held out are those whose content hashes lowest (keyed by the seed), not a shuffle of positions: as the logged data
    grows between retrainings, a conversation held out last time stays held out (the current version never trained on
    what the next one is compared on; a shuffle made most of them its training data), and copies of one conversation
    always fall on the same side."""
    order = [i for i in range(len(conversations)) if not conversations[i].meta.get("pin")]
    order.sort(key=lambda i: _rank(seed, conversations[i]))
    num_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        num_val = min(max(num_val, 1), len(order) - 1)
    held_out = set(order[:num_val])
    val = [c for i, c in enumerate(conversations) if i in held_out]
    train = [c for i, c in enumerate(conversations) if i not in held_out]
    return train, val
