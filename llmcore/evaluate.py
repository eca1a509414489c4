"""How good a version is: perplexity on assistant tokens, and greedy answers scored by character F1.

    python -m llmcore eval --models DIR [--version V] --data FILE [--limit N]

prints JSON: `ppl` (per assistant token), `loss_per_char` (nats per answer character, comparable across
tokenizers), `char_f1` (greedy answer vs the reference assistant turn, averaged over assistant turns).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmcore.dataset import IGNORE_INDEX, Conversation, make_batches, make_examples
from llmcore.model import LanguageModel
from llmcore.sampling import SamplingParams, generate, prompt_budget
from llmcore.tokenizer import Tokenizer

EVAL_BATCH_TOKENS = 8192
GENERATE_BATCH = 32


@dataclass
class Turn:
    """An assistant turn to answer: the history before it and the reference answer."""

    history: list[dict]
    reference: str


def char_f1(prediction: str, reference: str) -> float:
    """F1 of the multisets of non-space characters."""
    pred = Counter(c for c in prediction if not c.isspace())
    ref = Counter(c for c in reference if not c.isspace())
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


@torch.inference_mode()
def loss_on(model: LanguageModel, conversations: Sequence[Conversation], tokenizer: Tokenizer) -> dict:
    """Mean loss per assistant token and per answer character, over all windows of the conversations."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = make_examples(conversations, tokenizer, model.config.block_size)
    total, count, chars = 0.0, 0, 0
    for x, y in make_batches(examples, EVAL_BATCH_TOKENS, tokenizer.pad_id):
        x, y = x.to(device), y.to(device)
        total += float(model.loss(x, y, IGNORE_INDEX, reduction="sum"))
        targets = y[y != IGNORE_INDEX].tolist()
        count += len(targets)
        chars += sum(len(tokenizer.tokens[t]) if t >= tokenizer.num_special else 0 for t in targets)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "loss_per_char": total / max(chars, 1), "tokens": count}


def assistant_turns(conversations: Sequence[Conversation]) -> list[Turn]:
    return [Turn(c.messages[:i], m["content"]) for c in conversations for i, m in enumerate(c.messages)
            if m["role"] == "assistant" and i > 0]


def answer_turns(model: LanguageModel, tokenizer: Tokenizer, turns: Sequence[Turn], params: SamplingParams) -> list[str]:
    """Answers for each turn's history, generated in batches."""
    budget = prompt_budget(model.config.block_size, params.max_new_tokens)
    answers = []
    for start in range(0, len(turns), GENERATE_BATCH):
        chunk = turns[start : start + GENERATE_BATCH]
        prompts = [tokenizer.encode_prompt(t.history, max_tokens=budget) for t in chunk]
        outputs = generate(model, prompts, params, tokenizer.stop_ids)
        answers += [tokenizer.decode(o.token_ids) for o in outputs]
    return answers


def evaluate(model: LanguageModel, tokenizer: Tokenizer, conversations: Sequence[Conversation],
             limit: int | None = None, repetition_penalty: float = 1.0, max_new_tokens: int = 96) -> dict:
    """Loss/perplexity over all conversations, char-F1 over the first `limit` assistant turns."""
    result = loss_on(model, conversations, tokenizer)
    turns = assistant_turns(conversations)[:limit]
    params = SamplingParams(temperature=0.0, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
    answers = answer_turns(model, tokenizer, turns, params)
    scores = [char_f1(a, t.reference) for a, t in zip(answers, turns)]
    return {
        "ppl": result["ppl"],
        "loss": result["loss"],
        "loss_per_char": result["loss_per_char"],
        "char_f1": sum(scores) / len(scores) if scores else 0.0,
        "num_conversations": len(conversations),
        "num_turns": len(turns),
        "repetition_penalty": repetition_penalty,
    }
