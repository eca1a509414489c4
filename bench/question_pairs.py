"""FAQ matching on a file of real question pairs: each pair's second question stored as a FAQ entry, the first asked.

    .venv/bin/python bench/question_pairs.py --pairs dev.json [--encoders none,use,e5,use+e5] [--ceiling]

The shape of issue 12's re-check and of the public Chinese sentence-pair sets (AFQMC, LCQMC, BQ): JSON lines
{"sentence1": ..., "sentence2": ..., "label": "1"} or tab-separated lines `sentence1<TAB>sentence2<TAB>label`. Every
distinct sentence2 becomes a FAQ entry of its own (answer "-": a FAQ of bare questions), every sentence1 of a pair
labelled 1 is asked, and it is right when its first entry is its own pair's sentence2. Per matcher: top-1 and top-3
over all the positive pairs, and top-1 over random samples of 100 of them (the mean and the range of 20 draws: a
100-question figure moves by several points with the draw). Nothing is fitted on the file: the matchers are the
bot's, with their shipped fusions (bot/encoder.py, FUSIONS).

--ceiling also fits the pair's weights (BM25, USE's and e5's question cosines) on the file itself by a grid and
reports the best top-1 any such weighting reaches there: an upper bound for this matcher's features, not a figure
of the product. No pair file ships with the repository: bring your own. Prints JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faq import Memo  # noqa: E402  (bench/faq.py, beside this script)

from bot.encoder import load_encoder  # noqa: E402
from bot.search import FaqEntry, FaqIndex  # noqa: E402

SAMPLE, DRAWS = 100, 20


def read_pairs(path: Path) -> list[tuple[str, str, bool]]:
    """(sentence1, sentence2, paraphrase?) from JSON lines or tab-separated lines (label 1, "1", 1.0 or true: a paraphrase);
    malformed lines, and a TSV header (its label is not a number), are skipped."""
    pairs = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            first, second, label = row["sentence1"], row["sentence2"], row["label"]
        except (json.JSONDecodeError, KeyError, TypeError):
            fields = line.split("\t")
            if len(fields) != 3 or fields[2].strip().lower() not in ("0", "1", "0.0", "1.0", "true", "false"):
                continue
            first, second, label = fields
        if isinstance(first, str) and isinstance(second, str) and first.strip() and second.strip():
            pairs.append((first, second, str(label).strip().lower() in ("1", "1.0", "true")))
    return pairs


def ranked(index: FaqIndex, questions: list[str], targets: list[int]) -> tuple[list[bool], list[bool]]:
    """Per question: is its entry first; is it among the first three."""
    first, three = [], []
    for question, target in zip(questions, targets):
        ids = [int(m.entry.id) for m in index.match(question, 3)]
        first.append(ids[:1] == [target])
        three.append(target in ids)
    return first, three


def summary(first: list[bool], three: list[bool], samples: list[list[int]]) -> dict:
    drawn = [sum(first[i] for i in sample) / len(sample) for sample in samples]
    return {"top1": round(float(np.mean(first)), 3), "top3": round(float(np.mean(three)), 3),
            f"top1_{SAMPLE}_mean": round(float(np.mean(drawn)), 3), f"top1_{SAMPLE}_range": [round(min(drawn), 3), round(max(drawn), 3)]}


def ceiling(index: FaqIndex, questions: list[str], targets: list[int]) -> dict:
    """The best top-1 of BM25 + USE + e5 question cosines weighted by a grid, fitted on the questions themselves."""
    features = np.stack([index.features(q)[0][:, :3] for q in questions]).astype(np.float32)  # (Q, E, 3)
    right = np.array(targets)
    best = (0.0, None)
    for lexical, use in itertools.product((0, 2, 4, 6, 8, 10, 15, 20), (0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5)):
        rank = features @ np.array([lexical, 24 * use, 24], dtype=np.float32)  # e5's weight fixed: only ratios matter
        top1 = float((rank.argmax(1) == right).mean())
        best = max(best, (top1, (lexical, round(24 * use, 2), 24)), key=lambda b: b[0])
    return {"top1": round(best[0], 3), "weights_lexical_use_e5": best[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, type=Path, help="JSON lines (sentence1, sentence2, label) or TSV")
    parser.add_argument("--encoders", default="none,use,e5,use+e5", help="FAQ_ENCODER values to compare")
    parser.add_argument("--ceiling", action="store_true", help="also the best top-1 of weights fitted on the file (use+e5)")
    parser.add_argument("--seed", type=int, default=0, help="for the samples of 100")
    args = parser.parse_args()
    pairs = read_pairs(args.pairs)
    stored = list(dict.fromkeys(second for _, second, _ in pairs))
    position = {question: i for i, question in enumerate(stored)}
    asked = [(first, position[second]) for first, second, same in pairs if same]
    if not asked:
        sys.exit(f"{args.pairs}: no pair labelled 1")
    questions, targets = [q for q, _ in asked], [t for _, t in asked]
    rng = random.Random(args.seed)
    samples = [rng.sample(range(len(asked)), min(SAMPLE, len(asked))) for _ in range(DRAWS)]
    entries = [FaqEntry(str(i), question, "-") for i, question in enumerate(stored)]
    result: dict = {"pairs": len(pairs), "faq_entries": len(entries), "questions": len(asked), "matchers": {}}
    for name in args.encoders.split(","):
        encoder = None if name == "none" else Memo(load_encoder(name))
        started = time.perf_counter()
        index = FaqIndex(entries, encoder)
        result["matchers"]["bm25" if encoder is None else f"bm25 + {name}"] = {
            **summary(*ranked(index, questions, targets), samples), "seconds": round(time.perf_counter() - started, 1)}
        if args.ceiling and name == "use+e5":
            result["ceiling_use+e5_fitted_on_the_file"] = ceiling(index, questions, targets)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
