"""Is the new version better than the current one? Both scored on held-out conversations neither trained on.

    compare = compare_with(registry, registry.current(), val_convs, device, model, tokenizer, index, recipe, metrics)
    compare["val_char_f1"], compare.get("new_val_char_f1"), compare["turns"], compare.get("left_out")

The trainer calls it after a run with --compare-current (the bot's /retrain); llmcore/jobs.py promotes on its result
and the admin sees it beside the new version's own figures. Per character, since tokenizers differ between versions.
"""
from __future__ import annotations

import logging

import torch

from llmcore import chats
from llmcore.chats import Conversation
from llmcore.evaluate import BOT_REPETITION_PENALTY, VAL_CHAR_F1_TURNS, evaluate
from llmcore.model import LanguageModel
from llmcore.prompting import PromptRecipe
from llmcore.registry import TRAINED, Registry
from llmcore.retrieval import EvidenceIndex
from llmcore.selection import Selection
from llmcore.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def compare_with(registry: Registry, version: str, val_convs: list[Conversation], device: torch.device, model: LanguageModel,
                 tokenizer: Tokenizer, index: EvidenceIndex, recipe: PromptRecipe, metrics: dict) -> dict:
    """`version`'s scores on the held-out conversations it did not train on (the demo model trained on every FAQ pair,
    of which a /retrain holds a tenth out: on those the current version answered from memory). When it trained on some,
    the new version is scored on the same rest too (`new_val_char_f1`, `new_val_loss_per_char`; `left_out`: how many
    it trained on). When it trained on all of them there is nothing fair to compare on: no scores, 0 turns."""
    unseen = chats.not_in(val_convs, registry.path(version) / TRAINED)
    if not unseen:  # said so in the result: nothing compared (and jobs promote nothing on 0 turns)
        logger.info("%s trained on all %d held-out conversations: no comparison", version, len(val_convs))
        return {"version": version, "val_char_f1": None, "val_loss_per_char": None, "turns": 0, "conversations": 0,
                "left_out": len(val_convs)}
    compare = score_version(registry, version, unseen, device)
    if len(unseen) < len(val_convs):
        ours = evaluate(model.eval(), tokenizer, unseen, limit=VAL_CHAR_F1_TURNS, repetition_penalty=BOT_REPETITION_PENALTY,
                        index=index, recipe=recipe, gate=metrics.get("gate"), selection=Selection(**metrics["selection"]))
        compare.update(new_val_char_f1=ours["char_f1"], new_val_loss_per_char=ours["loss_per_char"],
                       conversations=len(unseen), left_out=len(val_convs) - len(unseen))
    return compare


def score_version(registry: Registry, version: str, val_convs: list[Conversation], device: torch.device) -> dict:
    """Another version's scores on these held-out conversations (per character: tokenizers differ between versions)."""
    loaded = registry.load(version, device)
    scores = evaluate(loaded.model.eval(), loaded.tokenizer, val_convs, limit=VAL_CHAR_F1_TURNS,
                      repetition_penalty=BOT_REPETITION_PENALTY, index=loaded.index, recipe=loaded.recipe, gate=loaded.gate,
                      selection=loaded.selection)
    return {"version": version, "val_loss_per_char": scores["loss_per_char"], "val_char_f1": scores["char_f1"],
            "turns": scores["num_turns"]}
