"""How good a version is: perplexity on assistant tokens, and its answers (as served) scored by character F1.

    python -m llmcore eval --models DIR [--version V] --data FILE [--limit N]

prints JSON: `ppl` (per assistant token), `loss_per_char` (nats per answer character, comparable across
tokenizers), `char_f1` (the answer as served, greedy or chosen among candidates by the version's selection
(llmcore/selection.py), vs the reference assistant turn, averaged over assistant turns),
`baseline_char_f1` (the BM25 nearest stored response from the version's own training data, on the same
turns: what a lookup table scores, the bar a generator must clear) and, for a version with a gate,
`gate_curve` (coverage, precision and recall of answers with kefu.p_correct at or above each threshold,
an answer being right at char-F1 >= 0.5). Answers are prompted exactly as `llmcore serve` prompts them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmcore.chats import Conversation
from llmcore.dataset import IGNORE_INDEX, make_batches, make_turn_examples
from llmcore.gate import RIGHT_F1, Gate, answer_features, gate_curve
from llmcore.model import LanguageModel
from llmcore.prompting import PLAIN, PromptRecipe, build_prompt, prompt_ids
from llmcore.retrieval import EvidenceIndex, Hit, char_f1
from llmcore.sampling import SamplingParams, generate, prompt_budget
from llmcore.selection import GREEDY, Selection
from llmcore.tokenizer import Tokenizer

EVAL_BATCH_TOKENS = 8192
GENERATE_BATCH = 32
ANSWER_TOKENS = 96  # the most an evaluated answer may take (the bot's MAX_ANSWER_TOKENS)
BOT_REPETITION_PENALTY = 1.2  # versions are scored as the bot asks (bot REPETITION_PENALTY)
VAL_CHAR_F1_TURNS = 400  # answers generated for a version's char-F1 on validation, and to fit its gate on


@dataclass
class Turn:
    """An assistant turn to answer: the history before it and the reference answer."""

    history: list[dict]
    reference: str


@torch.inference_mode()
def loss_on(model: LanguageModel, conversations: Sequence[Conversation], tokenizer: Tokenizer,
            index: EvidenceIndex | None = None, recipe: PromptRecipe = PLAIN) -> dict:
    """Mean loss per answer token and per answer character, over every assistant turn, prompted as served."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = make_turn_examples(conversations, tokenizer, model.config.block_size, index, recipe, exclude_own=False)
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
            if m["role"] == "assistant" and i > 0 and m.get("weight", 1)]


@dataclass
class ScoredTurn:
    answer: str
    confidence: float
    hits: list[Hit]  # the evidence the prompt held
    f1: float  # char-F1 to the reference

    @property
    def features(self) -> list[float]:
        return answer_features(self.answer, self.confidence, self.hits)


def answer_turns(model: LanguageModel, tokenizer: Tokenizer, turns: Sequence[Turn], params: SamplingParams,
                 index: EvidenceIndex | None = None, recipe: PromptRecipe = PLAIN,
                 selection: Selection = GREEDY) -> list[ScoredTurn]:
    """Each turn answered from its history, prompted and chosen as served (batches of GENERATE_BATCH), and scored."""
    budget = prompt_budget(model.config.block_size, params.max_new_tokens)
    scored: list[ScoredTurn] = []
    for start in range(0, len(turns), GENERATE_BATCH):
        chunk = turns[start : start + GENERATE_BATCH]
        retrieved = [selection.retrieve(index, t.history, recipe.evidence_k) for t in chunk]  # one search a turn, as served
        prompts = [build_prompt(tokenizer, index, recipe, t.history, budget, searched=hits if selection.enabled else None)
                   for t, hits in zip(chunk, retrieved)]
        runs = [generate(model, [ids for ids, _ in prompts], p, tokenizer.stop_ids) for p in selection.candidate_params(params)]
        variants = [[prompt_ids(tokenizer, recipe, t.history, budget, evidence)
                     for evidence in selection.variant_evidence(recipe, (), hits)] for t, hits in zip(chunk, retrieved)]
        flat = generate(model, [ids for row in variants for ids in row], params, tokenizer.stop_ids) if any(variants) else []
        written = iter(flat)  # the variants' answers, turn after turn
        for row, (turn, (_, hits)) in enumerate(zip(chunk, prompts)):
            generated = [(tokenizer.decode(run[row].token_ids), run[row].confidence) for run in runs]
            generated += [(tokenizer.decode(o.token_ids), o.confidence) for o in (next(written) for _ in variants[row])]
            choice = selection.choose(generated, retrieved[row], variants=len(variants[row]))
            scored.append(ScoredTurn(choice.text, choice.confidence, hits, char_f1(choice.text, turn.reference)))
    return scored


def retrieval_baseline(index: EvidenceIndex | None, turns: Sequence[Turn]) -> float | None:
    """Char-F1 of the BM25 nearest stored response: what a lookup table answers, the bar a generator must clear."""
    if index is None or not turns:
        return None
    scores = []
    for turn in turns:
        hits = index.search(turn.history, 1)
        scores.append(char_f1(hits[0].response, turn.reference) if hits else 0.0)
    return sum(scores) / len(scores)


def evaluate(model: LanguageModel, tokenizer: Tokenizer, conversations: Sequence[Conversation],
             limit: int | None = None, repetition_penalty: float = 1.0, max_new_tokens: int = ANSWER_TOKENS,
             index: EvidenceIndex | None = None, recipe: PromptRecipe = PLAIN, gate: Gate | None = None,
             selection: Selection = GREEDY) -> dict:
    """`evaluate_turns` without the per-turn detail."""
    return evaluate_turns(model, tokenizer, conversations, limit, repetition_penalty, max_new_tokens, index, recipe, gate,
                          selection)[0]


def evaluate_turns(model: LanguageModel, tokenizer: Tokenizer, conversations: Sequence[Conversation],
                   limit: int | None = None, repetition_penalty: float = 1.0, max_new_tokens: int = ANSWER_TOKENS,
                   index: EvidenceIndex | None = None, recipe: PromptRecipe = PLAIN,
                   gate: Gate | None = None, selection: Selection = GREEDY) -> tuple[dict, list[ScoredTurn]]:
    """Loss/perplexity over all conversations; char-F1 of the answers as served (greedy, or chosen by `selection`
    among candidates), and of the retrieval baseline on the same turns, over the first `limit` assistant turns;
    with a gate, its precision and recall on them."""
    result = loss_on(model, conversations, tokenizer, index, recipe)
    turns = assistant_turns(conversations)[:limit]
    params = SamplingParams(temperature=0.0, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
    scored = answer_turns(model, tokenizer, turns, params, index, recipe, selection)
    summary = {
        "ppl": result["ppl"],
        "loss": result["loss"],
        "loss_per_char": result["loss_per_char"],
        "char_f1": sum(s.f1 for s in scored) / len(scored) if scored else 0.0,
        "baseline_char_f1": retrieval_baseline(index, turns),
        "num_conversations": len(conversations),
        "num_turns": len(turns),
        "repetition_penalty": repetition_penalty,
        "selection": selection.to_dict(),
    }
    if gate is not None and scored:
        summary["gate_curve"] = gate_curve([gate.probability(s.features) for s in scored], [s.f1 >= RIGHT_F1 for s in scored])
    return summary, scored
