"""FAQ matching on paraphrases: BM25 alone, the sentence encoder alone, and the fusion the bot uses.

    .venv/bin/python bench/faq.py

The demo FAQ (llmcore/data/demo_faq.chat.jsonl, its similar questions included) against the 165 paraphrases
and 53 off-topic questions written for the tests (tests/data/demo_paraphrases.jsonl, offtopic.jsonl). Per
matcher: top-1 and top-3 (the right entry first, or among the three "did you mean" buttons), then what the bot
does at its thresholds (FAQ_BEST answers, FAQ_SUGGEST offers buttons): paraphrases answered right / wrong,
right entry offered, off-topic questions answered / offered buttons. The fusion's blend was chosen on the
even-numbered half of both sets; both halves are reported. Latency: p50 per query on the demo FAQ and on 3,000
entries (questions of the shared CrossWOZ dialogues). Prints a table, then JSON.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.encoder import load_encoder  # noqa: E402
from bot.faq import read_faq_file  # noqa: E402
from bot.search import COS_FLOOR, FaqEntry, FaqIndex, Match, cosine_score  # noqa: E402
from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import DEMO_DATA, read_conversations  # noqa: E402

DATA = REPO / "tests" / "data"
CROSSWOZ = REPO.parent / "shared" / "data" / "crosswoz_test.chat.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def semantic_only(index: FaqIndex, text: str, k: int) -> list[Match]:
    """The encoder's ranking alone, its cosine mapped as in the fusion (so the bot's thresholds apply)."""
    fused = index.match(text, k=len(index.entries))
    ranked = sorted(fused, key=lambda m: -(m.semantic or 0.0))[:k]
    return [Match(m.entry, cosine_score(m.semantic or COS_FLOOR), m.matched, m.lexical, m.semantic) for m in ranked]


def measure(rank, paraphrases: list[dict], offtopic: list[dict], answers: dict[str, str], settings: BotSettings) -> dict:
    top1 = top3 = right = wrong = offered = 0
    for item in paraphrases:
        matches = rank(item["question"])
        expected = answers[item["topic"]]
        top1 += bool(matches) and matches[0].entry.answer == expected
        top3 += any(m.entry.answer == expected for m in matches[:3])
        if matches and matches[0].score >= settings.faq_best:
            right += matches[0].entry.answer == expected
            wrong += matches[0].entry.answer != expected
        else:
            offered += any(m.entry.answer == expected and m.score >= settings.faq_suggest for m in matches[:3])
    off_answered = off_offered = 0
    for item in offtopic:
        matches = rank(item["question"])
        off_answered += bool(matches) and matches[0].score >= settings.faq_best
        off_offered += bool(matches) and settings.faq_suggest <= matches[0].score < settings.faq_best
    n = len(paraphrases)
    return {"paraphrases": n, "top1": round(top1 / n, 3), "top3": round(top3 / n, 3), "answered_right": right, "answered_wrong": wrong,
            "right_offered": offered, "offtopic": len(offtopic), "offtopic_answered": off_answered, "offtopic_offered": off_offered}


def latency_ms(index: FaqIndex, queries: list[str]) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.match(q, k=3)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    settings = BotSettings(_env_file=None)
    encoder = load_encoder("use")
    entries = [FaqEntry(str(i), e.question, e.answer, e.similar) for i, e in enumerate(read_faq_file(DEMO_DATA))]
    conversations, _ = read_conversations([DEMO_DATA])
    answers = {c.meta["topic"]: c.messages[-1]["content"] for c in conversations}
    paraphrases, offtopic = read_jsonl(DATA / "demo_paraphrases.jsonl"), read_jsonl(DATA / "offtopic.jsonl")
    lexical, hybrid = FaqIndex(entries), FaqIndex(entries, encoder)
    matchers = {"bm25": lambda q: lexical.match(q, k=3), "encoder": lambda q: semantic_only(hybrid, q, 3),
                "fusion (the bot)": lambda q: hybrid.match(q, k=3)}
    results: dict = {"faq_best": settings.faq_best, "faq_suggest": settings.faq_suggest}
    for name, rank in matchers.items():
        results[name] = {half: measure(rank, paraphrases[start::2], offtopic[start::2], answers, settings)
                         for half, start in (("fit_half", 0), ("check_half", 1))}
        results[name]["all"] = measure(rank, paraphrases, offtopic, answers, settings)
    queries = [p["question"] for p in paraphrases] + [o["question"] for o in offtopic]
    results["latency_p50_ms"] = {"demo_faq_bm25": latency_ms(lexical, queries), "demo_faq_fusion": latency_ms(hybrid, queries)}
    if CROSSWOZ.exists():
        convs, _ = read_conversations([CROSSWOZ])
        questions = list(dict.fromkeys(m["content"] for c in convs for m in c.messages if m["role"] == "user"))[:3000]
        big = [FaqEntry(str(i), q, "-") for i, q in enumerate(questions)]
        started = time.perf_counter()
        big_index = FaqIndex(big, encoder)
        results["latency_p50_ms"]["entries_3000_build_s"] = round(time.perf_counter() - started, 1)
        results["latency_p50_ms"]["entries_3000_bm25"] = latency_ms(FaqIndex(big), queries)
        results["latency_p50_ms"]["entries_3000_fusion"] = latency_ms(big_index, queries)
    header = f"{'matcher':18s} {'top1':>5s} {'top3':>5s} {'answered right/wrong':>21s} {'right offered':>14s}"
    print(header + f" {'off-topic answered/offered':>27s}")
    for name in matchers:
        a = results[name]["all"]
        print(f"{name:18s} {a['top1']:5.3f} {a['top3']:5.3f} {a['answered_right']:>10d} / {a['answered_wrong']:<8d}"
              f" {a['right_offered']:>14d} {a['offtopic_answered']:>14d} / {a['offtopic_offered']}")
    print("latency p50 ms:", results["latency_p50_ms"])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
