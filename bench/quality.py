"""Answer quality as customers get it: train on real dialogues, serve, ask held-out turns as the bot asks.

    .venv/bin/python bench/quality.py [--data FILE] [--heldout 60] [--minutes 10] [--arch transformer] \
        [--models DIR] [--train-arg=--evidence=0 ...] [--history 4] [--limit N] [--compare-greedy]

The dialogues (default: the shared CrossWOZ file) are split by dialogue, seeded: --heldout of them are
never trained on. A version trains on the rest for --minutes with the defaults (`python -m llmcore train
... --promote`, plus any --train-arg), or --models names a registry whose current version is used.
`llmcore serve`'s app then answers every held-out assistant turn over HTTP exactly as the bot asks
(temperature 0, the bot's repetition penalty and max_tokens, --history earlier turns; and the question
alone), one at a time (--concurrency N: N at once; under load the server chooses among fewer candidates);
the server chooses each answer among candidates as the version's select.json says (llmcore/selection.py),
and with --compare-greedy the same turns are asked again with that off. Prints one JSON object: char-F1
with and without history, the BM25 nearest-response baseline on the same turns (over the same training
dialogues), and the gate's precision/coverage curve on kefu.p_correct.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import torch
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import read_conversations  # noqa: E402
from llmcore.evaluate import assistant_turns, retrieval_baseline  # noqa: E402
from llmcore.gate import RIGHT_F1, gate_curve  # noqa: E402
from llmcore.registry import Registry  # noqa: E402
from llmcore.retrieval import char_f1  # noqa: E402
from llmcore.server import create_app  # noqa: E402
from llmcore.settings import ServeSettings  # noqa: E402
from llmcore.worker import Worker  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data" / "crosswoz_test.chat.jsonl"
MAX_BATCH = 32  # the server's default
CONCURRENCY = 1  # requests at once: one customer at a time gets every candidate (under load the server chooses among fewer)
GATE_DEFAULT = BotSettings.model_fields["min_answer_probability"].default


def split_file(data: Path, heldout: int, seed: int, work: Path) -> tuple[Path, Path]:
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[:heldout])
    train, test = work / "train.jsonl", work / "heldout.jsonl"
    train.write_text("\n".join(line for i, line in enumerate(lines) if i not in held) + "\n", encoding="utf-8")
    test.write_text("\n".join(line for i, line in enumerate(lines) if i in held) + "\n", encoding="utf-8")
    return train, test


def train_version(train: Path, models: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "llmcore", "train", "--data", str(train), "--models", str(models), "--arch", args.arch,
               "--max-minutes", str(args.minutes), "--promote", "--no-progress", *args.train_arg]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    registry = Registry(models)
    return registry.metrics(registry.current())


async def ask_all(url: str, turns: list, history: int, bot: BotSettings, concurrency: int) -> list[dict]:
    """Each turn's answer as the bot asks for it, `concurrency` requests at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def ask(session: aiohttp.ClientSession, turn) -> dict:
        earlier = turn.history[:-1][-history:] if history else []
        body = {"model": "kefu", "messages": [*earlier, turn.history[-1]], "max_tokens": bot.max_answer_tokens,
                "temperature": 0, "repetition_penalty": bot.repetition_penalty}
        async with gate, session.post(url + "/v1/chat/completions", json=body) as response:
            data = await response.json()
        return {"text": data["choices"][0]["message"]["content"], "p_correct": data["kefu"].get("p_correct"),
                "confidence": data["kefu"].get("confidence")}

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(ask(session, t) for t in turns))


def summarize(answers: list[dict], turns: list) -> dict:
    f1 = [char_f1(a["text"], t.reference) for a, t in zip(answers, turns)]
    result = {"char_f1": round(sum(f1) / len(f1), 4), "right_share": round(sum(x >= RIGHT_F1 for x in f1) / len(f1), 4)}
    if all(a["p_correct"] is not None for a in answers):
        result["gate_curve"] = gate_curve([a["p_correct"] for a in answers], [x >= RIGHT_F1 for x in f1])
        passed = [x for a, x in zip(answers, f1) if a["p_correct"] >= GATE_DEFAULT]
        by_confidence = sorted(zip(answers, f1), key=lambda pair: -(pair[0]["confidence"] or -1e9))[: len(passed)]
        result["same_coverage_precision"] = {  # the gate vs the mean log-probability, letting through as many answers
            "gate": round(sum(x >= RIGHT_F1 for x in passed) / max(len(passed), 1), 3),
            "confidence": round(sum(x >= RIGHT_F1 for _, x in by_confidence) / max(len(by_confidence), 1), 3),
            "coverage": round(len(passed) / len(answers), 3)}
    return result


async def answer_over_http(registry: Registry, turns: list, history: int, bot: BotSettings, select: bool,
                           concurrency: int) -> tuple[dict, dict]:
    """`llmcore serve`'s app on a free port (choosing among candidates as the version says, or greedy with
    select=False): the turns with `history` earlier turns, then with the question alone."""
    worker = Worker(registry, torch.device("cuda" if torch.cuda.is_available() else "cpu"), max_batch=MAX_BATCH)
    runner = web.AppRunner(create_app(ServeSettings(models=registry.root, select=select), worker))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}"
        return (summarize(await ask_all(url, turns, history, bot, concurrency), turns),
                summarize(await ask_all(url, turns, 0, bot, concurrency), turns))
    finally:
        await runner.cleanup()


async def amain(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kefu-quality-"))
    train, test = split_file(Path(args.data), args.heldout, args.seed, work)
    models = Path(args.models) if args.models else work / "models"
    metrics = Registry(models).metrics(Registry(models).current()) if args.models else train_version(train, models, args)
    conversations, _ = read_conversations([test])
    turns = [t for t in assistant_turns(conversations) if t.history[-1]["role"] == "user"][: args.limit]
    registry = Registry(models)
    bot = BotSettings(_env_file=None)
    served = await answer_over_http(registry, turns, args.history, bot, True, args.concurrency)
    greedy = await answer_over_http(registry, turns, args.history, bot, False, args.concurrency) if args.compare_greedy else None
    loaded = registry.load()
    return {
        "version": loaded.version, "arch": metrics.get("arch"), "num_params": metrics.get("num_params"),
        "train_tokens_per_s": metrics.get("train_tokens_per_s"), "train_seconds": metrics.get("train_seconds"),
        "tokenizer": metrics.get("tokenizer"), "prompt": metrics.get("prompt"), "turns": len(turns),
        "heldout_dialogues": len(conversations), "repetition_penalty": bot.repetition_penalty,
        "selection": loaded.selection.to_dict(),
        "history": args.history, "concurrency": args.concurrency, f"with_history_{args.history}": served[0], "question_alone": served[1],
        "greedy": {f"with_history_{args.history}": greedy[0], "question_alone": greedy[1]} if greedy else None,
        "bm25_nearest_response": round(retrieval_baseline(loaded.index, turns), 4) if loaded.index else None,
        "val_char_f1": metrics.get("val_char_f1"), "train_args": args.train_arg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA), help="chat JSONL dialogues (default: the shared CrossWOZ file)")
    parser.add_argument("--heldout", type=int, default=60, help="dialogues held out for the measurement")
    parser.add_argument("--seed", type=int, default=42, help="seed of the held-out split")
    parser.add_argument("--minutes", type=float, default=10, help="training budget")
    parser.add_argument("--arch", default="transformer", choices=("transformer", "lstm"))
    parser.add_argument("--train-arg", action="append", default=[], help="extra `llmcore train` argument (repeatable)")
    parser.add_argument("--models", help="use this registry's current version instead of training (same --data/--seed split!)")
    parser.add_argument("--history", type=int, default=4, help="earlier turns sent with the question, as MODEL_HISTORY")
    parser.add_argument("--limit", type=int, help="ask only the first N held-out turns")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"requests at once (default {CONCURRENCY}; under load the server chooses among fewer candidates)")
    parser.add_argument("--compare-greedy", action="store_true",
                        help="ask again with the server's selection off (LLMCORE_SELECT=0): the greedy answer alone")
    result = asyncio.run(amain(parser.parse_args()))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
