"""The demo knowledge base as customers meet it: new paraphrases answered right, off-topic questions declined.

    .venv/bin/python bench/demo_kb.py [--models DIR] [--minutes 3]

Runs the bot's real answer pipeline (bot/pipeline.py: small talk, FAQ, model with the bot's settings,
gates, fallback) against a private Redis holding the demo FAQ and `llmcore serve`'s app. Without
--models, the demo model is trained first exactly as `make run` trains it (`bot up`: --max-minutes 3,
no validation split). Asks every question of tests/data/demo_paraphrases.jsonl (written for the tests,
not in the corpus) and tests/data/offtopic.jsonl, each in a new chat. A paraphrase counts as answered
right when the reply is its topic's answer (from the FAQ, or a model answer with char-F1 >= 0.8 to it);
an off-topic question counts as declined when the reply is the fallback. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from aiohttp import web
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.encoder import load_encoder  # noqa: E402
from bot.exchanges import ExchangeLog  # noqa: E402
from bot.faq import FaqStore  # noqa: E402
from bot.history import History  # noqa: E402
from bot.llm import LlmClient  # noqa: E402
from bot.pipeline import Pipeline  # noqa: E402
from bot.settings import BotSettings  # noqa: E402
from bot.stack import demo_training_command  # noqa: E402
from llmcore.chats import DEMO_DATA, read_conversations  # noqa: E402
from llmcore.registry import Registry  # noqa: E402
from llmcore.retrieval import char_f1  # noqa: E402
from llmcore.server import create_app  # noqa: E402
from llmcore.settings import ServeSettings  # noqa: E402
from llmcore.worker import Worker  # noqa: E402
from tests.conftest import free_port, start_redis  # noqa: E402

DATA = REPO / "tests" / "data"
RIGHT_MODEL_F1 = 0.8


def topic_answers() -> dict[str, str]:
    conversations, _ = read_conversations([DEMO_DATA])
    return {c.meta["topic"]: c.messages[-1]["content"] for c in conversations}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_demo(models: Path, minutes: float) -> None:
    subprocess.run(demo_training_command(models, minutes), check=True, stdout=subprocess.DEVNULL)


async def measure(pipeline: Pipeline, answers: dict[str, str]) -> dict:
    paraphrases, offtopic = read_jsonl(DATA / "demo_paraphrases.jsonl"), read_jsonl(DATA / "offtopic.jsonl")
    right, offered, sources, misses = 0, 0, Counter(), []
    for n, item in enumerate(paraphrases):
        reply = await pipeline.answer(1_000_000 + n, 1_000_000 + n, item["question"], "zh")
        expected = answers[item["topic"]]
        ok = reply.text == expected or (reply.source == "model" and char_f1(reply.text, expected) >= RIGHT_MODEL_F1)
        right += ok
        offered += not ok and any(m.entry.answer == expected for m in reply.suggestions)
        sources[f"{reply.source}{'' if ok else ' (wrong)' if reply.source != 'fallback' else ''}"] += 1
        if not ok:
            misses.append({"question": item["question"], "source": reply.source, "reply": reply.text[:60]})
    declined, wrongly_answered = 0, []
    for n, item in enumerate(offtopic):
        reply = await pipeline.answer(2_000_000 + n, 2_000_000 + n, item["question"], item["lang"])
        declined += reply.source == "fallback"
        if reply.source != "fallback":
            wrongly_answered.append({"question": item["question"], "source": reply.source, "reply": reply.text[:60]})
    return {"paraphrases": len(paraphrases), "paraphrases_right": round(right / len(paraphrases), 3),
            "right_entry_offered_as_did_you_mean": round(offered / len(paraphrases), 3),
            "paraphrase_sources": dict(sources), "offtopic": len(offtopic), "offtopic_declined": round(declined / len(offtopic), 3),
            "paraphrase_misses": misses, "offtopic_answered": wrongly_answered}


async def amain(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kefu-demo-kb-"))
    models = Path(args.models) if args.models else work / "models"
    if not args.models:
        train_demo(models, args.minutes)
    registry = Registry(models)
    runner = web.AppRunner(create_app(ServeSettings(models=registry.root), Worker(registry, torch.device("cpu"), max_batch=8)))
    await runner.setup()
    llm_port, redis_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", llm_port).start()
    redis_proc = start_redis(redis_port, work)
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_port}/0", decode_responses=True)
    settings = BotSettings(_env_file=None)
    llm = LlmClient(f"http://127.0.0.1:{llm_port}", settings.llmcore_timeout_s)
    await llm.start()
    try:
        faq = FaqStore(redis, settings.redis_prefix, load_encoder(settings.faq_encoder))  # as the bot builds it
        await faq.load_demo_if_empty()
        await faq.ready()  # the whole matcher from the first question
        pipeline = Pipeline(settings, History(redis, settings.redis_prefix, settings.history_turns, settings.history_ttl_s), faq, llm,
                            ExchangeLog(redis, settings.redis_prefix, settings.log_retention_days))
        result = await measure(pipeline, topic_answers())
    finally:
        await llm.close()
        await redis.aclose()
        redis_proc.terminate()
        await runner.cleanup()
    return {"version": registry.current(), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="registry whose current version answers (default: train the demo model as make run does)")
    parser.add_argument("--minutes", type=float, default=3, help="demo model training time when --models is not given")
    parser.add_argument("--verbose", action="store_true", help="also list every miss")
    args = parser.parse_args()
    result = asyncio.run(amain(args))
    if not args.verbose:
        result = {k: v for k, v in result.items() if k not in ("paraphrase_misses", "offtopic_answered")}
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
