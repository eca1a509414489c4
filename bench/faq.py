"""FAQ matching on paraphrases: BM25 alone, each bundled sentence encoder alone, and fused with BM25 as the bot does.

    .venv/bin/python bench/faq.py            # the table, the FAQ_BEST curve, then JSON (--no-latency: skip the timing)
    .venv/bin/python bench/faq.py --fit      # fit each encoder's fusion on all the questions first (print it)

The demo FAQ (llmcore/data/demo_faq.chat.jsonl, its similar questions included) against the 165 paraphrases
and 53 off-topic questions written for the tests (tests/data/demo_paraphrases.jsonl, offtopic.jsonl). Per
matcher: top-1 and top-3 (the right entry first, or among the three "did you mean" buttons), then what the bot
does at its thresholds (FAQ_BEST answers, FAQ_SUGGEST offers buttons): paraphrases answered right / wrong,
right entry offered, off-topic questions answered / offered buttons. Each fused matcher is reported with its
shipped fusion ("all") and cross-validated (each half of both sets measured with the fusion fitted on the other
half: the figure for questions a fit has not seen). Latency: p50 per query on the demo FAQ and on 3,000 entries
(questions of the shared CrossWOZ dialogues); throughput: questions/s matched from 6 threads at once, e5 asked once a
question and as shipped (waiting questions in one call). Prints a table, then JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot import encoder, search  # noqa: E402
from bot.encoder import Fusion, load_encoder, query_vector  # noqa: E402
from bot.faq import read_faq_file  # noqa: E402
from bot.search import FaqEntry, FaqIndex, unknown_share  # noqa: E402
from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import DEMO_DATA, read_conversations  # noqa: E402

DATA = REPO / "tests" / "data"
CROSSWOZ = REPO.parent / "shared" / "data" / "crosswoz_test.chat.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


WRONG_COST = 3.0
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # FAQ_BEST values measured


class Memo:
    """An encoder that remembers the vectors it made, whose fusion the bench may change."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dims, self.fusion, self.seen = inner, inner.name, inner.dims, inner.fusion, {}
        if hasattr(inner, "parts"):  # a joint encoder's parts: the matcher asks the first alone first (bot/search.py)
            self.parts = [Memo(part) for part in inner.parts]

    def encode(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.seen]
        self.seen.update(zip(missing, self.inner.encode(missing)))
        return np.stack([self.seen[t] for t in texts]) if texts else self.inner.encode(texts)

    def encode_answers(self, texts):
        missing = [t for t in dict.fromkeys(texts) if ("answer", t) not in self.seen]
        self.seen.update(zip((("answer", t) for t in missing), self.inner.encode_answers(missing)))
        return np.stack([self.seen["answer", t] for t in texts]) if texts else self.inner.encode_answers(texts)


def fit_fusion(index: FaqIndex, questions: list[str], targets: list[int | None]) -> Fusion:
    """The fusion fitted on `questions` (target: the right entry's index, None for an off-topic question): the rank's
    weights maximise the likelihood of the right entry over all entries (softmax), first without the spread terms,
    then the spread weights with the others fixed; each confidence is a logistic regression of "the first entry is the
    right one" on the first entry's rank without the spread terms and its margin over the rival (the second's rank, at
    least the median first rank of the off-topic questions), the informed one on the question's unknown share too.
    The confidence is fitted on the rank of the entries' best wordings, as in a FAQ without similar questions, where
    the spread is 0 and its scores are as before (bot/encoder.py, Fusion); in use it reads the rank with the spread, so
    an entry whose wordings disagree ranks and scores a little lower."""
    import torch

    features = torch.tensor(np.stack([index.features(q)[0] for q in questions]), dtype=torch.float32)  # (Q, E, F)
    parts = len(index.encoder.dims)
    base, spread = features[:, :, : -parts], features[:, :, -parts:]
    known = [i for i, t in enumerate(targets) if t is not None]
    right = torch.tensor([targets[i] for i in known])
    weights, spread_weights = torch.zeros(base.shape[2], requires_grad=True), torch.zeros(parts, requires_grad=True)

    def minimize(params, loss_fn) -> None:
        optimizer = torch.optim.LBFGS(params, max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        optimizer.step(closure)

    minimize([weights], lambda: torch.nn.functional.cross_entropy(base[known] @ weights, right) + 1e-5 * (weights ** 2).sum())
    rank = (base @ weights).detach()
    minimize([spread_weights], lambda: torch.nn.functional.cross_entropy(rank[known] + spread[known] @ spread_weights, right)
             + 1e-5 * (spread_weights ** 2).sum())
    top2 = rank.topk(2, dim=1)
    unrelated = [i for i, t in enumerate(targets) if t is None]
    floor = float(top2.values[unrelated, 0].median()) if unrelated else float("-inf")  # an off-topic question's best rank
    unknown = torch.tensor([unknown_share(q, index.vocabulary) for q in questions], dtype=torch.float32)
    x = torch.stack([top2.values[:, 0], top2.values[:, 0] - top2.values[:, 1].clamp(min=floor), unknown], 1)
    y = torch.tensor([float(t is not None and int(top2.indices[i, 0]) == t) for i, t in enumerate(targets)])
    weight = 1 + (WRONG_COST - 1) * (1 - y)  # a wrong answer costs more than a question left to the buttons or the model

    def confidence(inputs: int) -> tuple[float, ...]:
        """(the inputs' weights..., the constant), fitted on the first `inputs` columns of x."""
        params = torch.zeros(inputs + 1, requires_grad=True)
        minimize([params], lambda: torch.nn.functional.binary_cross_entropy_with_logits(x[:, :inputs] @ params[:inputs] + params[inputs],
                                                                                         y, weight))
        return tuple(round(float(v), 3) for v in params.detach())

    w, s = [round(float(v), 3) for v in weights.detach()], tuple(round(float(v), 3) for v in spread_weights.detach())
    (a, b, c), (ia, ib, iu, ic) = confidence(2), confidence(3)
    return Fusion(w[0], tuple(w[1 : 1 + parts]), tuple(w[1 + parts : 1 + 2 * parts]), w[-1], round(floor, 2), (a, b, c), (ia, ib, ic, iu),
                  s)


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


def added(a: dict, b: dict) -> dict:
    """Two halves' counts as one set."""
    n = a["paraphrases"] + b["paraphrases"]
    out = {key: a[key] + b[key] for key in a if key not in ("top1", "top3")}
    out.update({key: round((a[key] * a["paraphrases"] + b[key] * b["paraphrases"]) / n, 3) for key in ("top1", "top3")})
    return out


def cross_validated(encoder: Memo, halves: list[Fusion], rank, paraphrases: list[dict], offtopic: list[dict],
                    answers: dict[str, str], settings: BotSettings) -> dict:
    """measure() of each half of both sets with the fusion fitted on the other half (halves[i]: fitted without half i)."""
    shipped, checked = encoder.fusion, []
    for start, fusion in enumerate(halves):
        encoder.fusion = fusion
        checked.append(measure(rank, paraphrases[start::2], offtopic[start::2], answers, settings))
    encoder.fusion = shipped
    return added(*checked)


@contextlib.contextmanager
def no_cascade():
    """Every question scored by the joint encoder's whole pair (bot/search.py, CASCADE), for the block."""
    before, search.CASCADE = search.CASCADE, (0.0, 1.0)
    try:
        yield
    finally:
        search.CASCADE = before


def latency_ms(index: FaqIndex, queries: list[str]) -> float:
    times = []
    for q in queries:
        query_vector.cache_clear()  # every question encoded as a new one (a repeated question costs no encoding)
        started = time.perf_counter()
        index.match(q, k=3)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


@contextlib.contextmanager
def one_call_per_question():
    """e5 asked once per question however many wait (bot/encoder.py, MAX_JOINED), for the block."""
    before, encoder.MAX_JOINED = encoder.MAX_JOINED, 1
    try:
        yield
    finally:
        encoder.MAX_JOINED = before


def questions_per_s(index: FaqIndex, queries: list[str], threads: int = 6) -> float:
    """Every query matched as a new one from `threads` threads at once (the bot's default executor on 2 vCPU: 6)."""
    query_vector.cache_clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda q: index.match(q, 3), queries))
    return round(len(queries) / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit each encoder's fusion on all the questions and print it")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurements (a minute or two)")
    args = parser.parse_args()
    settings = BotSettings(_env_file=None)
    entries = [FaqEntry(str(i), e.question, e.answer, e.similar) for i, e in enumerate(read_faq_file(DEMO_DATA))]
    conversations, _ = read_conversations([DEMO_DATA])
    answers = {c.meta["topic"]: c.messages[-1]["content"] for c in conversations}
    paraphrases, offtopic = read_jsonl(DATA / "demo_paraphrases.jsonl"), read_jsonl(DATA / "offtopic.jsonl")
    position = {entry.answer: i for i, entry in enumerate(entries)}

    def fitting_set(part_p: list[dict], part_o: list[dict]) -> tuple[list[str], list[int | None]]:
        return ([p["question"] for p in part_p] + [o["question"] for o in part_o],
                [position[answers[p["topic"]]] for p in part_p] + [None] * len(part_o))

    lexical = FaqIndex(entries)
    results: dict = {"faq_best": settings.faq_best, "faq_suggest": settings.faq_suggest, "faq_encoder": settings.faq_encoder,
                     "fusion": {}, "thresholds": {}, "thresholds_cross_validated": {}}
    results["bm25"] = {"all": measure(lexical.match, paraphrases, offtopic, answers, settings)}
    for name in ("use", "e5", "use+e5"):
        encoder = Memo(load_encoder(name))
        index = FaqIndex(entries, encoder)
        if args.fit:
            encoder.fusion = fit_fusion(index, *fitting_set(paraphrases, offtopic))
        results["fusion"][name] = str(encoder.fusion)
        rank = index.match  # k=3 below
        row = results[f"bm25 + {name}"] = {"all": measure(rank, paraphrases, offtopic, answers, settings)}
        # cross-validated: each half measured with the fusion fitted on the other
        halves = [fit_fusion(index, *fitting_set(paraphrases[1 - start :: 2], offtopic[1 - start :: 2])) for start in (0, 1)]
        validated = functools.partial(cross_validated, encoder, halves, rank, paraphrases, offtopic, answers)
        row["cross_validated"] = validated(settings)
        if name == settings.faq_encoder:  # the default encoder: what each FAQ_BEST would do, shipped and cross-validated
            for best in THRESHOLDS:
                at = settings.model_copy(update={"faq_best": best, "faq_suggest": min(settings.faq_suggest, best)})
                results["thresholds"][best] = measure(rank, paraphrases, offtopic, answers, at)
                results["thresholds_cross_validated"][best] = validated(at)
            if getattr(index, "part_encoders", None):  # the same, every question scored by the whole pair (no CASCADE)
                with no_cascade():
                    results[f"bm25 + {name}, no cascade"] = {"all": measure(rank, paraphrases, offtopic, answers, settings),
                                                             "cross_validated": validated(settings)}
                    results["thresholds_no_cascade"] = {best: measure(rank, paraphrases, offtopic, answers, settings.model_copy(
                        update={"faq_best": best, "faq_suggest": min(settings.faq_suggest, best)})) for best in THRESHOLDS}
    queries = [p["question"] for p in paraphrases] + [o["question"] for o in offtopic]
    results["latency_p50_ms"] = {}
    if not args.no_latency:
        latency(results["latency_p50_ms"], entries, lexical, queries, settings)
    print_table(results)


def latency(results: dict, entries: list[FaqEntry], lexical: FaqIndex, queries: list[str], settings: BotSettings) -> None:
    default = FaqIndex(entries, load_encoder(settings.faq_encoder))
    results.update(demo_faq_bm25=latency_ms(lexical, queries), demo_faq_fusion=latency_ms(default, queries))
    with no_cascade():
        results["demo_faq_fusion_no_cascade"] = latency_ms(default, queries)
    with one_call_per_question():
        once = questions_per_s(default, queries)
    results["questions_per_s_from_6_threads"] = {"e5_once_a_question": once, "shipped": questions_per_s(default, queries)}
    if CROSSWOZ.exists():
        convs, _ = read_conversations([CROSSWOZ])
        # the demo FAQ and CrossWOZ questions (answer "-") to 3,000 entries: the test questions have their entries
        # among 3,000 (with the pair's first part deciding alone when sure, a FAQ none of them is about measures less)
        questions = list(dict.fromkeys(m["content"] for c in convs for m in c.messages if m["role"] == "user"))
        big = entries + [FaqEntry(str(len(entries) + i), q, "-") for i, q in enumerate(questions[: 3000 - len(entries)])]
        started = time.perf_counter()
        big_index = FaqIndex(big, default.encoder)
        results["entries_3000_build_s"] = round(time.perf_counter() - started, 1)
        results["entries_3000_bm25"] = latency_ms(FaqIndex(big), queries)
        results["entries_3000_fusion"] = latency_ms(big_index, queries)
        with no_cascade():
            results["entries_3000_fusion_no_cascade"] = latency_ms(big_index, queries)


def print_table(results: dict) -> None:
    header = f"{'matcher':32s} {'top1':>5s} {'top3':>5s} {'answered right/wrong':>21s} {'right offered':>14s}"
    print(header + f" {'off-topic answered/offered':>27s}")
    for name, row in results.items():
        for kind, a in row.items() if isinstance(row, dict) and "all" in row else ():
            print(f"{name + ' (' + kind + ')':32s} {a['top1']:5.3f} {a['top3']:5.3f} {a['answered_right']:>10d} / {a['answered_wrong']:<8d}"
                  f" {a['right_offered']:>14d} {a['offtopic_answered']:>14d} / {a['offtopic_offered']}")
    for best, a in results["thresholds"].items():
        c = results["thresholds_cross_validated"][best]
        print(f"{results['faq_encoder']} at FAQ_BEST {best}: answered right {a['answered_right']} / wrong {a['answered_wrong']}, "
              f"off-topic answered {a['offtopic_answered']} of {a['offtopic']}; cross-validated {c['answered_right']} / "
              f"{c['answered_wrong']}, {c['offtopic_answered']}")
    for name, fusion in results["fusion"].items():
        print(f"{name}: {fusion}")
    print("latency p50 ms:", results["latency_p50_ms"])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
