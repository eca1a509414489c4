"""Two versions side by side on the same held-out turns: each one's answer, prompted, decoded and chosen as served
(greedy, the bot's repetition penalty, the version's own evidence, recipe and answer selection), and its char-F1 to
the real answer.

    result = compare_versions(registry, "v0003", "v0005", turns=20)

The turns are those the newer of the two held out of its training (`heldout.jsonl` in its folder, written by the
trainer beside the weights), or the older's when the newer kept none (`heldout_from` says which), less those the other
version trained on (`trained.bin`: the fingerprints of its training conversations; a version trained before it was
kept is compared on all of them). When the other trained on every one, all of them, and `other_trained_on_them` says so
(a retraining whose held-out turns are FAQ pairs the older version learned).
"""
from __future__ import annotations

import torch

from llmcore.chats import not_in, read_conversations
from llmcore.evaluate import BOT_REPETITION_PENALTY, answer_turns, assistant_turns
from llmcore.registry import HELDOUT, TRAINED, Registry, RegistryError
from llmcore.sampling import SamplingParams

MAX_COMPARED_TURNS = 50
MAX_NEW_TOKENS = 96  # the bot's MODEL_MAX_TOKENS


def compare_versions(registry: Registry, a: str, b: str, turns: int = 20, device: torch.device | str = "cpu") -> dict:
    """Both versions' answers to the same held-out turns, and their mean char-F1; RegistryError when a version does not
    exist or neither kept held-out turns."""
    if a == b:
        raise RegistryError("pick two different versions")
    known = registry.versions()
    for version in (a, b):
        if version not in known:
            raise RegistryError(f"no version {version!r}")
    source = next((v for v in sorted((a, b), key=lambda v: int(v[1:]), reverse=True) if (registry.path(v) / HELDOUT).is_file()), None)
    if source is None:
        raise RegistryError(f"neither {a} nor {b} kept held-out turns (trained without a validation split)")
    conversations, _ = read_conversations([registry.path(source) / HELDOUT], skip_bad=True)
    other = b if source == a else a
    unseen = not_in(conversations, registry.path(other) / TRAINED)  # what the other trained on is no test of it
    conversations = unseen or conversations  # all of them, said so, when it trained on every one
    asked = assistant_turns(conversations)[: max(1, min(turns, MAX_COMPARED_TURNS))]
    params = SamplingParams(temperature=0.0, repetition_penalty=BOT_REPETITION_PENALTY, max_new_tokens=MAX_NEW_TOKENS)
    answers = {}
    for version in (a, b):
        loaded = registry.load(version, device)
        answers[version] = answer_turns(loaded.model.eval(), loaded.tokenizer, asked, params, loaded.index, loaded.recipe,
                                        loaded.selection)  # chosen as served
    rows = [{"history": turn.history[:-1], "question": turn.history[-1]["content"], "reference": turn.reference,
             "answers": [{"version": v, "text": answers[v][i].answer, "char_f1": round(answers[v][i].f1, 4)} for v in (a, b)]}
            for i, turn in enumerate(asked)]
    mean = {v: round(sum(s.f1 for s in answers[v]) / len(asked), 4) if asked else None for v in (a, b)}
    better = [sum(answers[v][i].f1 > answers[w][i].f1 for i in range(len(asked))) for v, w in ((a, b), (b, a))]
    return {"versions": [a, b], "heldout_from": source, "other_trained_on_them": not unseen, "num_turns": len(asked), "char_f1": mean,
            "better": {a: better[0], b: better[1], "tie": len(asked) - sum(better)}, "turns": rows}
