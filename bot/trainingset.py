"""The training set a /retrain sends to llmcore: what the bot learned from its own conversations.

Logged exchanges that were not rated 👎 and were not fallbacks or small talk, operators' answers (pinned to the
training side of the split and repeated OPERATOR_WEIGHT times: they are the best data there is; the
bot's own answers to a question an operator answered are left out), and every FAQ question with its
answer; deduplicated, already scrubbed of personal data when logged; at most PER_CUSTOMER exchanges of any one
customer (their latest). Each logged exchange comes with the earlier
turns of its chat (context only), so the model learns to use the history the bot sends it. At most MAX_BYTES as
sent: the newest logged exchanges and every FAQ question (past llmcore's 64 MiB a request, ~57,000 logged exchanges,
every /retrain was refused until old ones expired).
"""
from __future__ import annotations

import json
from collections import Counter

from bot.exchanges import ExchangeLog
from bot.faq import FaqStore

OPERATOR_WEIGHT = 3
PER_CUSTOMER = 200  # a customer's logged exchanges in one training set at most (their latest): one account flooding
# the bot cannot become most of what it learns, nor of what the next version is compared on
MAX_BYTES = 60 << 20  # the records as JSON, under the 64 MiB llmcore takes in one request (llmcore/admin.py)


def _conversation(context: list[dict], question: str, answer: str, source: str) -> dict:
    meta = {"source": source, **({"pin": True} if source == "operator" else {})}
    return {"messages": [*context, {"role": "user", "content": question}, {"role": "assistant", "content": answer}], "meta": meta}


async def build_training_set(log: ExchangeLog, faq: FaqStore, context_turns: int = 0) -> list[dict]:
    """Records in chat JSONL; logged ones start with up to `context_turns` earlier messages of their chat."""
    seen: set[tuple[str, str]] = set()
    out: list[dict] = []

    def add(context: list[dict], question: str, answer: str, source: str) -> None:
        key = (question.strip(), answer.strip())
        if not all(key) or key in seen or (source != "operator" and key in faq_keys):
            return
        seen.add(key)
        out.extend([_conversation(context, *key, source)] * (OPERATOR_WEIGHT if source == "operator" else 1))

    # the FAQ's pairs go last, as its own records: a logged copy of one (the bot's) would take its place, and go with
    # the oldest logged exchanges when the set is cut to MAX_BYTES; an operator's stays, pinned and weighted
    faq_pairs = [key for key in dict.fromkeys((question.strip(), entry.answer.strip()) for entry in await faq.entries()
                                              for question in (entry.question, *entry.similar)) if all(key)]
    faq_keys = set(faq_pairs)
    records = [r async for r in log.conversations(context_turns=context_turns, with_user=True)]
    users = [r["meta"].pop("user_id", None) for r in records]  # counted, never sent
    per_customer: Counter[str | None] = Counter()
    over_cap = set()
    for i in reversed(range(len(records))):  # newest first: a customer's latest exchanges are kept
        if records[i]["meta"]["source"] != "operator":
            per_customer[users[i]] += 1
            if per_customer[users[i]] > PER_CUSTOMER:
                over_cap.add(i)
    answered_by_people = {r["messages"][-2]["content"].strip() for r in records if r["meta"]["source"] == "operator"}
    for i, record in enumerate(records):
        if i in over_cap:
            continue
        *context, question, answer = record["messages"]
        if record["meta"]["source"] != "operator" and question["content"].strip() in answered_by_people:
            continue  # an operator answered this question: that answer supersedes the bot's own
        add(context, question["content"], answer["content"], record["meta"]["source"])
    out.extend(_conversation([], *key, "faq") for key in faq_pairs if key not in seen)
    return _newest_that_fit(out, MAX_BYTES)


def _newest_that_fit(records: list[dict], budget: int) -> list[dict]:
    """The records without the oldest logged ones (they come first, the FAQ's last) until they fit `budget` bytes as
    sent (JSON as aiohttp writes it: ASCII, ", " between records)."""
    sizes = [len(json.dumps(record)) + 2 for record in records]
    total, first = sum(sizes), 0
    while total > budget and first < len(records):
        total -= sizes[first]
        first += 1
    return records[first:]
