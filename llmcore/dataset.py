"""Conversations (llmcore.chats) in, training windows and batches out.

    examples = make_turn_examples(train, tokenizer, block_size=256, index=None, recipe=PromptRecipe())
    for x, y in make_batches(examples, max_tokens=2048, rng=random.Random(0)): ...

An assistant message with `"weight": 0` is context only: it is neither learned nor retrieved.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmcore.chats import Conversation
from llmcore.prompting import PromptRecipe, prompt_ids, retrieve
from llmcore.retrieval import EvidenceIndex, Hit
from llmcore.tokenizer import Tokenizer

IGNORE_INDEX = -100
SHAPE_MULTIPLE = 16  # batch widths are rounded up to this (make_batches)
SINGLE_TURN_SHARE = 0.2  # training prompts that show the question alone: a first message has no history either
STOCK_EVIDENCE_SHARE = 0.7  # how often a stock answer's other occurrence is put among the evidence in training


@dataclass
class Example:
    """One training window: ids (≤ block_size + 1) and which targets carry loss."""

    ids: list[int]
    mask: list[int]


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


def collate(examples: Sequence[Example], pad_id: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Inputs (B, T) and targets (B, T) with IGNORE_INDEX where no loss applies; T is the longest example's, or `width`."""
    width = max(width or 0, max(len(e.ids) for e in examples) - 1)
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
    """Length-bucketed batches of about `max_tokens` padded tokens each, in shuffled order when `rng` is given.

    Widths are rounded up to a multiple of SHAPE_MULTIPLE (never past the longest example): a few dozen batch shapes
    instead of hundreds, and a shape's first step is the expensive one (kernel set-up, ~3x a later step in bf16)."""
    longest = max((len(e.ids) - 1 for e in examples), default=0)

    def padded(n_ids: int) -> int:
        return min(longest, -(-(n_ids - 1) // SHAPE_MULTIPLE) * SHAPE_MULTIPLE)

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    if rng is not None:  # shuffle within similar lengths, then shuffle the batches
        order = sorted(order, key=lambda i: (padded(len(examples[i].ids)), rng.random()))
    batches, current, width = [], [], 0
    for i in order:
        width_if_added = max(width, padded(len(examples[i].ids)))
        if current and width_if_added * (len(current) + 1) > max_tokens:
            batches.append((current, width))
            current, width_if_added = [], padded(len(examples[i].ids))
        current.append(examples[i])
        width = width_if_added
    if current:
        batches.append((current, width))
    if rng is not None:
        rng.shuffle(batches)
    return [collate(b, pad_id, w) for b, w in batches]
