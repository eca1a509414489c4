"""The learning loop as a benchmark: answer quality before and after, and how long retraining takes.

    .venv/bin/python bench/loop.py [--first-minutes 1] [--retrain-minutes 2]

A first model (the default Transformer) trains on the demo FAQ for --first-minutes and serves; the bot
runs against the tests' local Bot API server with a private Redis and the demo FAQ. Users ask five
questions the FAQ and the model do not know; an operator answers each through the handoff; an admin
sends /retrain (default model size, --retrain-minutes; the bot restarts while it trains); the new
version is promoted; the same questions are asked again. Prints char-F1 of the answers against the
operators' text, before and after, the retraining time, and one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import torch
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import DEMO_DATA  # noqa: E402
from llmcore.registry import Registry  # noqa: E402
from llmcore.server import create_app  # noqa: E402
from llmcore.settings import ServeSettings  # noqa: E402
from llmcore.train import TrainOptions, train  # noqa: E402
from llmcore.worker import Worker  # noqa: E402
from tests.botapi import BotApiServer  # noqa: E402
from tests.conftest import free_port, start_redis  # noqa: E402
from tests.loopflow import ADMIN, NEW_QA, OPERATORS, run_loop  # noqa: E402

TOKEN = "bench-loop-token"


async def amain(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp())
    train(TrainOptions(data=[str(DEMO_DATA)], arch="transformer", models=str(work / "models"), max_minutes=args.first_minutes,
                       val_fraction=0.0, promote=True, progress=False))
    registry = Registry(work / "models")
    worker = Worker(registry, torch.device("cuda" if torch.cuda.is_available() else "cpu"), max_batch=16)
    runner = web.AppRunner(create_app(ServeSettings(models=registry.root, admin_token=TOKEN), worker))
    await runner.setup()
    llm_port, redis_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", llm_port).start()
    redis_proc = start_redis(redis_port, work)
    try:
        async with BotApiServer() as telegram:
            settings = BotSettings(_env_file=None, telegram_bot_token=telegram.token, telegram_api_base=telegram.base,
                                   redis_url=f"redis://127.0.0.1:{redis_port}/0", llmcore_url=f"http://127.0.0.1:{llm_port}",
                                   admin_ids=str(ADMIN), operator_chat_id=OPERATORS, llmcore_admin_token=TOKEN)
            result = await run_loop(telegram, settings, minutes=args.retrain_minutes, timeout=args.retrain_minutes * 60 + 300)
    finally:
        redis_proc.terminate()
        await runner.cleanup()
    print(f"answers' char-F1 against the operators' text: before {result['before_char_f1']}, after {result['after_char_f1']} "
          f"({result['version']}); /retrain to promoted: {result['retrain_seconds']} s")
    for (question, _), before, after in zip(NEW_QA, result["before"], result["after"]):
        print(f"  {question}\n    before: {before[:60]}\n    after:  {after[:60]}")
    print(json.dumps({"bench": "loop", "first_minutes": args.first_minutes, "retrain_minutes": args.retrain_minutes,
                      **{k: v for k, v in result.items() if k not in ("before", "after")}}, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-minutes", type=float, default=1.0, help="training time of the first (served) model")
    parser.add_argument("--retrain-minutes", type=float, default=2.0, help="/retrain's training time")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
