"""Benchmark the bot end to end over its webhook, side by side with a bare PTB echo bot.

    .venv/bin/python bench/bot.py [--updates 2000] [--chats 200] [--concurrency 32]
    .venv/bin/python bench/bot.py --questions paraphrases     # customers' own wordings: Kefu with and without its encoder

Both bots run in this process against the tests' local Bot API server (tests/botapi.py) on loopback;
Kefu with a private real Redis and its demo FAQ, every question one of the FAQ's own (answered from the
FAQ; llmcore is not involved). Updates are POSTed to each bot's webhook by `--concurrency` senders over
`--chats` private chats. Measured per bot: updates/s from the first POST to the last answer received by
the Bot API server; then, one message at a time, the time from its POST to its answer (p50/p99, "alone";
the burst's own p50 is queueing and is shown as "loaded"). For Kefu also the time its pipeline spent
choosing the answer (from the training log): what Kefu adds around its answer source is its time minus
that minus the echo bot's. Kefu runs with its outbound limiter off (the local server has no flood
limit; with Telegram's 30 messages/s the limiter, not the bot, would be measured). Prints a table, then JSON.

`--questions paraphrases`: the questions are the tests' paraphrases and off-topic questions (tests/data/), worded as
no FAQ question is, so the matcher encodes each one (every question as a new one: the encoder's cache of recent
questions is emptied before each POST); Kefu runs three times, with `FAQ_ENCODER=none`, with the default encoder asking
e5 once per question (as before 2026-12-03, later) and with the default as shipped (questions that wait for e5 are
encoded in one call: bot/encoder.py, MAX_JOINED), side by side with the echo bot. llmcore is not running: what the FAQ
does not answer gets the fallback at once (the circuit breaker), so the figures are the bot's own work, the FAQ match
included.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
from aiohttp import web
from telegram import Update
from telegram.ext import ApplicationBuilder, MessageHandler, filters

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faq import one_call_per_question  # noqa: E402  (bench/faq.py, beside this script)

from bot import encoder  # noqa: E402
from bot.app import build_application, run_webhook  # noqa: E402
from bot.encoder import query_vector  # noqa: E402
from bot.faq import read_faq_file  # noqa: E402
from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import DEMO_DATA  # noqa: E402
from tests.botapi import BotApiServer, text_update  # noqa: E402
from tests.conftest import free_port, start_redis  # noqa: E402

DATA = REPO / "tests" / "data"

SECRET = "bench-secret"


class TimedBotApi(BotApiServer):
    """Records when each answer arrives, per chat."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: dict[int, list[float]] = defaultdict(list)
        self.total = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def done_with(self, count: int) -> None:
        while self.total < count:
            await self.wait_for("sendMessage", since=len(self.calls))

    def _send_message(self, params: dict) -> dict:
        result = super()._send_message(params)
        self.answered[int(params["chat_id"])].append(time.perf_counter())
        self.total += 1
        if self.total >= self.expected:
            self.done.set()
        return result


async def echo(update: Update, context) -> None:
    await update.effective_message.reply_text(update.effective_message.text)


async def run_echo_bot(server: TimedBotApi, port: int, stop: asyncio.Event) -> None:
    """The baseline: PTB's Application, a MessageHandler that echoes, and a bare aiohttp webhook route."""
    application = (ApplicationBuilder().token(server.token).base_url(f"{server.base}/bot").concurrent_updates(256).build())
    application.add_handler(MessageHandler(filters.TEXT, echo))

    async def receive(request: web.Request) -> web.Response:
        await application.update_queue.put(Update.de_json(await request.json(), application.bot))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", receive)
    async with application:
        await application.start()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await application.bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token=SECRET)
        await stop.wait()
        await runner.cleanup()
        await application.stop()


async def load(server: TimedBotApi, questions: list[str], args: argparse.Namespace) -> dict:
    """Throughput, then latency: `updates` from `concurrency` senders at once, then `--latency-updates` one at a time."""
    new = args.questions == "paraphrases"
    burst = await send(server, questions, args.updates, args.chats, args.concurrency, first_id=1_000_000, new_wordings=new)
    alone = await send(server, questions, args.latency_updates, args.chats, 1, first_id=2_000_000, new_wordings=new)
    return {"updates_per_s": burst["updates_per_s"], "p50_ms": alone["p50_ms"], "p99_ms": alone["p99_ms"],
            "under_load_p50_ms": burst["p50_ms"]}


async def send(server: TimedBotApi, questions: list[str], updates: int, chats: int, concurrency: int, first_id: int,
               new_wordings: bool = False) -> dict:
    """POST the updates with `concurrency` senders (each waits for the POST, not for the answer); wait for every answer."""
    rng = random.Random(first_id)
    plan = [(10_000 + rng.randrange(chats), rng.choice(questions)) for _ in range(updates)]
    sent: dict[int, list[float]] = defaultdict(list)
    server.expected, server.total = updates, 0
    server.answered.clear()
    server.done.clear()
    queue = list(enumerate(plan))
    async with aiohttp.ClientSession() as session:
        async def sender() -> None:
            while queue:
                i, (chat, text) = queue.pop(0)
                body = {"update_id": first_id + i, **text_update(text, chat_id=chat, user_id=chat)}
                if new_wordings:
                    query_vector.cache_clear()
                sent[chat].append(time.perf_counter())
                async with session.post(server.webhook["url"], json=body, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as r:
                    await r.read()
                if concurrency == 1:  # the latency phase: one message in flight at a time
                    await server.done_with(server.total + 1)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        await asyncio.wait_for(server.done.wait(), 600)
        seconds = max(t for ts in server.answered.values() for t in ts) - started
    latencies = [a - s for chat, times in sent.items() for s, a in zip(times, server.answered[chat])]
    return {"updates_per_s": round(updates / seconds, 1), "p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99)}


def _ms(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


async def bench_kefu(server: TimedBotApi, redis_url: str, questions: list[str], args: argparse.Namespace,
                     **overrides) -> dict:
    port = free_port()
    settings = BotSettings(_env_file=None, **overrides, telegram_bot_token=server.token, telegram_api_base=server.base, redis_url=redis_url,
                           redis_prefix=f"bench:{overrides.get('faq_encoder', 'default')}:{encoder.MAX_JOINED}:",
                           llmcore_url=f"http://127.0.0.1:{free_port()}", webhook_secret=SECRET,
                           webhook_url=f"http://127.0.0.1:{port}/hook", webhook_listen=f"127.0.0.1:{port}",
                           rate_limit_per_minute=100_000, outbound_per_second=0)
    application = build_application(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_webhook(application, settings, stop))
    await server.wait_for("setWebhook", timeout=60)
    await application.bot_data.services.faq.ready()  # the demo FAQ's vectors made before the clock starts
    result = await load(server, questions, args)
    kefu = application.bot_data.services
    source_ms = [int(e["latency_ms"]) async for _, e in kefu.log.entries()][-args.latency_updates:]  # the one-at-a-time phase
    stop.set()
    await task
    result["answer_source_p50_ms"] = float(statistics.median(source_ms))
    result["answer_source_p99_ms"] = float(statistics.quantiles(source_ms, n=100, method="inclusive")[98])
    result["answers_timed"] = len(source_ms)
    return result


async def bench_echo(server: TimedBotApi, questions: list[str], args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    task = asyncio.create_task(run_echo_bot(server, free_port(), stop))
    await server.wait_for("setWebhook", timeout=60)
    result = await load(server, questions, args)
    stop.set()
    await task
    return result


async def amain(args: argparse.Namespace) -> None:
    if args.questions == "paraphrases":
        questions = [json.loads(line)["question"] for name in ("demo_paraphrases.jsonl", "offtopic.jsonl")
                     for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        questions = [q for e in read_faq_file(DEMO_DATA) for q in (e.question, *e.similar)]
    port = free_port()
    redis_proc = start_redis(port, Path(tempfile.mkdtemp()))
    redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        async with TimedBotApi() as echo_server:
            echo_result = await bench_echo(echo_server, questions, args)
        if args.questions == "paraphrases":
            async with TimedBotApi() as lexical_server:
                lexical = await bench_kefu(lexical_server, redis_url, questions, args, faq_encoder="none")
            with one_call_per_question():
                async with TimedBotApi() as alone_server:
                    alone = await bench_kefu(alone_server, redis_url, questions, args)
        async with TimedBotApi() as kefu_server:
            kefu_result = await bench_kefu(kefu_server, redis_url, questions, args)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    if args.questions == "paraphrases":
        report_encoder(echo_result, lexical, alone, kefu_result, args)
        return
    ratio = round(kefu_result["updates_per_s"] / echo_result["updates_per_s"], 3)
    added = round(kefu_result["p50_ms"] - kefu_result["answer_source_p50_ms"] - echo_result["p50_ms"], 1)
    print(f"\n{'bot':6} {'updates/s':>10} {'alone p50 ms':>13} {'alone p99 ms':>13} {'loaded p50 ms':>14}")
    for name, r in (("echo", echo_result), ("kefu", kefu_result)):
        print(f"{name:6} {r['updates_per_s']:10.1f} {r['p50_ms']:13.1f} {r['p99_ms']:13.1f} {r['under_load_p50_ms']:14.1f}")
    print(f"kefu answer source (FAQ match) p50 {kefu_result['answer_source_p50_ms']} ms, p99 {kefu_result['answer_source_p99_ms']} ms; "
          f"so around it Kefu adds {added} ms (p50) to what the echo bot takes; "
          f"kefu keeps {ratio:.0%} of the echo bot's throughput (target >= 50%)")
    print(json.dumps({"bench": "bot", "updates": args.updates, "chats": args.chats, "concurrency": args.concurrency,
                      "echo": echo_result, "kefu": kefu_result, "kefu_over_echo": ratio, "kefu_added_p50_ms": added}))


def report_encoder(echo_result: dict, lexical: dict, alone: dict, kefu_result: dict, args: argparse.Namespace) -> None:
    print(f"\n{'bot':30} {'updates/s':>10} {'alone p50 ms':>13} {'alone p99 ms':>13} {'answer source p50 ms':>21}")
    for name, r in (("echo", echo_result), ("kefu BM25", lexical), ("kefu default, e5 once a question", alone),
                    ("kefu default", kefu_result)):
        print(f"{name:30} {r['updates_per_s']:10.1f} {r['p50_ms']:13.1f} {r['p99_ms']:13.1f} {r.get('answer_source_p50_ms', 0):21.1f}")
    kept, kept_alone = (round(r["updates_per_s"] / lexical["updates_per_s"], 3) for r in (kefu_result, alone))
    print(f"with its default encoder Kefu keeps {kept:.0%} of its throughput with BM25 alone ({kept_alone:.0%} with e5 "
          "asked once a question; issue 12: >= 80%)")
    print(json.dumps({"bench": "bot", "questions": "paraphrases", "updates": args.updates, "chats": args.chats,
                      "concurrency": args.concurrency, "echo": echo_result, "kefu_bm25": lexical, "kefu_e5_once_a_question": alone,
                      "kefu": kefu_result, "encoder_kept": kept, "encoder_kept_e5_once_a_question": kept_alone}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000, help="updates per bot")
    parser.add_argument("--chats", type=int, default=200, help="private chats the updates are spread over")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent webhook POSTs in the throughput phase")
    parser.add_argument("--latency-updates", type=int, default=200, help="updates sent one at a time for the latency figures")
    parser.add_argument("--questions", choices=("faq", "paraphrases"), default="faq",
                        help="the FAQ's own wordings, or new ones (Kefu then measured with and without its encoder)")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
