"""Chat JSONL in, training windows and batches out.

    convs = read_conversations(["a.chat.jsonl"])          # DataError naming file:line on bad input
    train, val = split_conversations(convs, val_fraction=0.1, seed=0)
    examples = make_turn_examples(train, tokenizer, block_size=256, index=None, recipe=PromptRecipe())
    for x, y in make_batches(examples, max_tokens=2048, rng=random.Random(0)): ...

Each line is `{"messages": [{"role": ..., "content": ...}, ...], "meta": {...}}` (ARCHITECTURE.md). As in
OpenAI's fine-tuning format, an assistant message with `"weight": 0` is context only: it is neither learned
nor retrieved (the earlier turns of a logged chat, which may be fallbacks).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from llmcore.prompting import PromptRecipe, prompt_ids, retrieve
from llmcore.retrieval import EvidenceIndex, Hit
from llmcore.tokenizer import ROLE_TOKENS, Tokenizer

IGNORE_INDEX = -100
DEMO_DATA = Path(__file__).parent / "data" / "demo_faq.chat.jsonl"  # the demo shop FAQ: default training data
MAX_LINE_BYTES = 1 << 20
SINGLE_TURN_SHARE = 0.2  # training prompts that show the question alone: a first message has no history either
STOCK_EVIDENCE_SHARE = 0.7  # how often a stock answer's other occurrence is put among the evidence in training


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and line."""


@dataclass
class Conversation:
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    origin: str = ""  # "file:line"


@dataclass
class Example:
    """One training window: ids (≤ block_size + 1) and which targets carry loss."""

    ids: list[int]
    mask: list[int]


def parse_conversation(line: str) -> Conversation:
    """One JSONL line to a Conversation; ValueError saying what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
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


def data_sha256(paths: Sequence[str | Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def split_conversations(conversations: Sequence[Conversation], val_fraction: float,
                        seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Seeded split by whole conversation; with a fraction > 0, at least one on each side when there are two or more.
    Conversations marked `"meta": {"pin": true}` (an operator's answer) are always trained on, never held out."""
    order = [i for i in range(len(conversations)) if not conversations[i].meta.get("pin")]
    random.Random(seed).shuffle(order)
    num_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        num_val = min(max(num_val, 1), len(order) - 1)
    held_out = set(order[:num_val])
    val = [c for i, c in enumerate(conversations) if i in held_out]
    train = [c for i, c in enumerate(conversations) if i not in held_out]
    return train, val


def make_turn_examples(conversations: Sequence[Conversation], tokenizer: Tokenizer, block_size: int,
                       index: EvidenceIndex | None, recipe: PromptRecipe, exclude_own: bool = True,
                       seed: int = 0, question_loss: bool = False) -> list[Example]:
    """One window per assistant turn: its prompt exactly as it will be served (the recipe's history, evidence
    retrieved from `index`), then the answer, which alone carries loss (with `question_loss`, the user's
    question too: each user turn is a question in one window only, so it is learned once).

    With `exclude_own` (training: `index` was built from these same conversations, in this order), a turn's
    evidence never comes from its own conversation, nor from a copy of the target turn stored elsewhere, so
    the target is never its own evidence. There, when the same answer is stored for another question (a
    stock answer: one FAQ answer to several wordings),
    that occurrence joins the evidence at a random place most of the time (STOCK_EVIDENCE_SHARE), even if
    BM25 missed it: the model learns to pick and copy the stored answer that fits, not to recite answers by
    heart, which is what carries it to questions worded in ways it never saw.
    """
    rng = random.Random(seed)
    max_answer = block_size // 2
    examples = []
    for group, conversation in enumerate(conversations):
        for i, message in enumerate(conversation.messages):
            if message["role"] != "assistant" or i == 0 or message.get("weight", 1) == 0:
                continue
            answer = tokenizer.encode(message["content"])
            answer = answer[:max_answer] if len(answer) > max_answer else answer + [tokenizer.end_id]
            history = 0 if rng.random() < SINGLE_TURN_SHARE else -1
            text, question = message["content"], conversation.messages[i - 1]["content"]
            hits = retrieve(index, recipe, conversation.messages[i - 1 if history == 0 else 0 : i],  # what the prompt shows
                            exclude_group=group if exclude_own else None,
                            exclude=(question, text) if exclude_own else None)
            if (exclude_own and recipe.evidence_k > 0 and index is not None and index.is_stock(text, question)
                    and text not in {h.response for h in hits} and rng.random() < STOCK_EVIDENCE_SHARE):
                hits.insert(rng.randrange(min(len(hits), recipe.evidence_k - 1) + 1), Hit(text, 1.0, ""))
                hits = hits[: recipe.evidence_k]
            prompt = prompt_ids(tokenizer, recipe, conversation.messages[:i], block_size + 1 - len(answer), hits, history)
            mask = [0] * len(prompt)
            if question_loss and tokenizer.role_ids["user"] in prompt:
                start = len(prompt) - prompt[::-1].index(tokenizer.role_ids["user"])  # after the question's role token
                mask[start : len(prompt) - 1] = [1] * (len(prompt) - 1 - start)  # its text and end, not the opener
            examples.append(Example(prompt + answer, mask + [1] * len(answer)))
    return examples


def collate(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor]:
    """Inputs (B, T) and targets (B, T) with IGNORE_INDEX where no loss applies."""
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        x[row, :n] = torch.tensor(e.ids[:-1])
        targets = torch.tensor(e.ids[1:])
        y[row, :n] = torch.where(torch.tensor(e.mask[1:], dtype=torch.bool), targets, IGNORE_INDEX)
    return x, y


def make_batches(examples: Sequence[Example], max_tokens: int, pad_id: int,
                 rng: random.Random | None = None) -> list[tuple[Tensor, Tensor]]:
    """Length-bucketed batches of about `max_tokens` padded tokens each, in shuffled order when `rng` is given."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    if rng is not None:  # shuffle within similar lengths, then shuffle the batches
        order = sorted(order, key=lambda i: (len(examples[i].ids) // 16, rng.random()))
    batches, current, width = [], [], 0
    for i in order:
        width_if_added = max(width, len(examples[i].ids))
        if current and width_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, width_if_added = [], len(examples[i].ids)
        current.append(examples[i])
        width = width_if_added
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return [collate(b, pad_id) for b in batches]
