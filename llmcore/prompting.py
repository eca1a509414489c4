"""How a version turns a conversation into its prompt: the recipe it was trained with, applied the same way
in training, evaluation, `generate`/`chat` and serving.

    recipe = PromptRecipe(evidence_k=2, max_history=4)
    ids, hits = build_prompt(tokenizer, index, recipe, messages, max_tokens=160)
    ids, hits = build_prompt(tokenizer, index, recipe, messages, 160, extra_evidence=["a FAQ answer"])
    recipe.save(folder); PromptRecipe.load(folder)     # prompt.json beside the weights

The recipe travels with the version (`prompt.json`), so the server rebuilds exactly the prompts the
model learned from; a version without one takes no evidence and its whole history, as before.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llmcore.retrieval import EvidenceIndex, Hit
from llmcore.tokenizer import Tokenizer

PROMPT_FILE = "prompt.json"
EVIDENCE_FILE = "evidence.jsonl"
MAX_REQUEST_EVIDENCE = 4  # evidence a request may bring of its own


@dataclass(frozen=True)
class PromptRecipe:
    evidence_k: int = 0  # retrieved answers put in the prompt (0: none)
    max_history: int | None = None  # turns before the question the model sees (None: as many as fit)
    max_evidence_tokens: int = 96  # each piece of evidence is cut to this

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptRecipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: Path) -> None:
        (folder / PROMPT_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> PromptRecipe:
        path = folder / PROMPT_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else cls()


PLAIN = PromptRecipe()  # no evidence, the whole history: versions trained before retrieval


def retrieve(index: EvidenceIndex | None, recipe: PromptRecipe, messages: Sequence[dict],
             extra_evidence: Sequence[str] = (), exclude_group: int | None = None,
             exclude: tuple[str, str] | None = None, searched: Sequence[Hit] | None = None) -> list[Hit]:
    """The evidence for this conversation: the caller's own first (it knows best), then the index's, k at most.
    `searched`: the index's hits for these messages, best first, when the caller has searched already (the server,
    for answer selection's candidates): its first hits are what a search here would find."""
    if recipe.evidence_k <= 0:
        return []
    hits = [Hit(text, 1.0, "") for text in list(extra_evidence)[:MAX_REQUEST_EVIDENCE] if text.strip()]
    if index is not None and len(hits) < recipe.evidence_k:
        seen, wanted = {h.response for h in hits}, recipe.evidence_k + len(hits)
        found = searched[:wanted] if searched is not None and len(searched) >= wanted else \
            index.search(messages, wanted, exclude_group, exclude)
        hits += [h for h in found if h.response not in seen]
    return hits[: recipe.evidence_k]


def build_prompt(tokenizer: Tokenizer, index: EvidenceIndex | None, recipe: PromptRecipe, messages: Sequence[dict],
                 max_tokens: int, extra_evidence: Sequence[str] = (), exclude_group: int | None = None,
                 max_history: int | None = -1, searched: Sequence[Hit] | None = None) -> tuple[list[int], list[Hit]]:
    """Prompt ids of at most `max_tokens`, and the evidence in them (best first). `max_history` overrides the
    recipe's (-1: the recipe's); `searched` as for retrieve()."""
    hits = retrieve(index, recipe, messages, extra_evidence, exclude_group, searched=searched)
    return prompt_ids(tokenizer, recipe, messages, max_tokens, hits, max_history), hits


def prompt_ids(tokenizer: Tokenizer, recipe: PromptRecipe, messages: Sequence[dict], max_tokens: int, hits: Sequence[Hit],
               max_history: int | None = -1) -> list[int]:
    """The prompt for `messages` with this evidence, in the recipe's shape."""
    history = recipe.max_history if max_history == -1 else max_history
    return tokenizer.encode_prompt(messages, max_tokens=max_tokens, evidence=[h.response for h in hits],
                                   max_history=history, max_evidence_tokens=recipe.max_evidence_tokens)
