"""FAQ matching on paraphrases: BM25 alone, each bundled sentence encoder alone, and fused with BM25 as the bot does.

    .venv/bin/python bench/faq.py            # the table and JSON
    .venv/bin/python bench/faq.py --fit      # also: the cosine range of each encoder that the even half prefers

The demo FAQ (llmcore/data/demo_faq.chat.jsonl, its similar questions included) against the 165 paraphrases
and 53 off-topic questions written for the tests (tests/data/demo_paraphrases.jsonl, offtopic.jsonl). Per
matcher: top-1 and top-3 (the right entry first, or among the three "did you mean" buttons), then what the bot
does at its thresholds (FAQ_BEST answers, FAQ_SUGGEST offers buttons): paraphrases answered right / wrong,
right entry offered, off-topic questions answered / offered buttons. The fusion's blend was chosen on the
even-numbered half of both sets; both halves are reported. Latency: p50 per query on the demo FAQ and on 3,000
entries (questions of the shared CrossWOZ dialogues). Prints a table, then JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.encoder import load_encoder  # noqa: E402
from bot.faq import read_faq_file  # noqa: E402
from bot.search import FaqEntry, FaqIndex, Match  # noqa: E402
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
    return [Match(m.entry, float(index.cosine_score(m.semantic or 0.0)), m.matched, m.lexical, m.semantic) for m in ranked]


class Memo:
    """An encoder that remembers the vectors it made: the fit asks the same questions once per cosine range."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.cos_range, self.seen = inner, inner.name, inner.cos_range, {}

    def encode(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.seen]
        self.seen.update(zip(missing, self.inner.encode(missing)))
        return np.stack([self.seen[t] for t in texts]) if texts else self.inner.encode(texts)


def utility(result: dict) -> float:
    """What a cosine range is fitted for: paraphrases answered right or offered, wrong answers and off-topic answers
    weighing three times as much against."""
    return (result["answered_right"] + 0.5 * result["right_offered"] - 3 * result["answered_wrong"]
            - 3 * result["offtopic_answered"] - 0.5 * result["offtopic_offered"])


def fit_cos_range(index: FaqIndex, paraphrases: list[dict], offtopic: list[dict], answers: dict[str, str],
                  settings: BotSettings) -> tuple[float, float]:
    """The (floor, ceiling) of the fusion's cosine mapping that does best on the given (fitting) sets."""
    encoder, best = index.encoder, None
    grid = [round(0.05 * i, 2) for i in range(4, 20)]
    for floor, ceil in itertools.product(grid, grid):
        if ceil >= floor + 0.1:
            encoder.cos_range = (floor, ceil)
            value = utility(measure(lambda q: index.match(q, k=3), paraphrases, offtopic, answers, settings))
            best = max(best or (value, floor, ceil), (value, floor, ceil))
    return best[1], best[2]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit each encoder's cosine range on the even half first")
    args = parser.parse_args()
    settings = BotSettings(_env_file=None)
    entries = [FaqEntry(str(i), e.question, e.answer, e.similar) for i, e in enumerate(read_faq_file(DEMO_DATA))]
    conversations, _ = read_conversations([DEMO_DATA])
    answers = {c.meta["topic"]: c.messages[-1]["content"] for c in conversations}
    paraphrases, offtopic = read_jsonl(DATA / "demo_paraphrases.jsonl"), read_jsonl(DATA / "offtopic.jsonl")
    lexical = FaqIndex(entries)
    matchers = {"bm25": lambda q: lexical.match(q, k=3)}
    results: dict = {"faq_best": settings.faq_best, "faq_suggest": settings.faq_suggest, "cos_range": {}}
    for name in ("use", "e5", "use+e5"):
        hybrid = FaqIndex(entries, Memo(load_encoder(name)))
        if args.fit:
            hybrid.encoder.cos_range = fit_cos_range(hybrid, paraphrases[0::2], offtopic[0::2], answers, settings)
        results["cos_range"][name] = hybrid.encoder.cos_range
        matchers[f"{name} alone"] = lambda q, index=hybrid: semantic_only(index, q, 3)
        matchers[f"bm25 + {name}"] = lambda q, index=hybrid: index.match(q, k=3)
    for name, rank in matchers.items():
        results[name] = {half: measure(rank, paraphrases[start::2], offtopic[start::2], answers, settings)
                         for half, start in (("fit_half", 0), ("check_half", 1))}
        results[name]["all"] = measure(rank, paraphrases, offtopic, answers, settings)
    queries = [p["question"] for p in paraphrases] + [o["question"] for o in offtopic]
    default = FaqIndex(entries, load_encoder(settings.faq_encoder))
    results["latency_p50_ms"] = {"demo_faq_bm25": latency_ms(lexical, queries), "demo_faq_fusion": latency_ms(default, queries)}
    if CROSSWOZ.exists():
        convs, _ = read_conversations([CROSSWOZ])
        questions = list(dict.fromkeys(m["content"] for c in convs for m in c.messages if m["role"] == "user"))[:3000]
        big = [FaqEntry(str(i), q, "-") for i, q in enumerate(questions)]
        started = time.perf_counter()
        big_index = FaqIndex(big, default.encoder)
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
