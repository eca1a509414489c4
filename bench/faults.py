"""Fault injection on the real bot process: what a crash, a Redis crash and a mixed burst cost the customers.

    .venv/bin/python bench/faults.py [--updates 300] [--mixed 600] [--models models]

The bot runs as `python -m bot run` (webhook mode) in a subprocess against the tests' local Bot API server, with a
private Redis (append-only file, fsync always) and, for the mixed burst, `llmcore serve` on a trained registry.

- bot-kill: `--updates` questions from as many chats POSTed in a burst (each acknowledged with 200), the bot killed
  with -9 once a third are answered, restarted, and every update POSTed again (as Telegram would, had it not
  heard the 200s). Reported: chats answered, chats answered twice.
- redis-kill: the same burst; Redis killed with -9 once a third are answered and restarted 1 s later from its AOF.
  Updates the webhook refused meanwhile (503) are POSTed again until accepted, as Telegram does.
- mixed: `--mixed` questions, half FAQ and half for the model, at the default outbound limit (30/s), llmcore up;
  then the bot's RSS after idling, after a second burst of as many new chats, and after idling again.
  Reported: fallbacks because the model was unavailable, FAQ answers' p50 from POST to answer, next to the p50 the
  outbound limit alone imposes (answer i of n cannot leave before i/30 s).

Outbound calls of the bot-kill and redis-kill runs are limited to 60/s, so that the burst lasts long enough to be
interrupted. Prints a table, then JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.faq import read_faq_file  # noqa: E402
from llmcore.chats import DEMO_DATA  # noqa: E402
from tests.botapi import BotApiServer, text_update  # noqa: E402
from tests.conftest import free_port, start_redis  # noqa: E402

IDLE_S = 15  # idling between the bursts of the memory check
SECRET = "faults-secret"
MODEL_QUESTIONS = ["北京有什么好玩的景点？", "推荐一家附近的餐厅", "明天天气怎么样", "怎么去天安门", "酒店有免费wifi吗",
                   "这个景点门票多少钱", "有没有适合带孩子去的地方", "地铁几点停运"]


class Recorder(BotApiServer):
    """Records when each answer arrives, per chat."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[int, list[tuple[float, str]]] = {}

    def _send_message(self, params: dict) -> dict:
        result = super()._send_message(params)
        self.answers.setdefault(int(params["chat_id"]), []).append((time.perf_counter(), params["text"]))
        return result


class Stack:
    def __init__(self, server: Recorder, workdir: Path, llmcore_url: str, outbound: float) -> None:
        self.server, self.workdir = server, workdir
        self.redis_port, self.port = free_port(), free_port()
        self.redis = start_redis(self.redis_port, workdir, persist=True)
        self.env = {**os.environ, "TELEGRAM_BOT_TOKEN": server.token, "TELEGRAM_API_BASE": server.base,
                    "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0", "REDIS_PREFIX": "faults:", "LLMCORE_URL": llmcore_url,
                    "WEBHOOK_URL": f"http://127.0.0.1:{self.port}/hook", "WEBHOOK_LISTEN": f"127.0.0.1:{self.port}",
                    "WEBHOOK_SECRET": SECRET, "REPLICA_NAME": "faults", "RATE_LIMIT_PER_MINUTE": "100000",
                    "OUTBOUND_PER_SECOND": str(outbound), "MODEL_HISTORY": "0"}
        self.log = open(workdir / "bot.log", "a")  # noqa: SIM115
        self.bot: subprocess.Popen | None = None

    async def start_bot(self) -> None:
        mark = len(self.server.calls)
        self.bot = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=self.env, cwd=REPO, stdout=self.log,
                                    stderr=subprocess.STDOUT)
        await self.server.wait_for("setWebhook", since=mark, timeout=120)

    def kill_bot(self) -> None:
        self.bot.send_signal(signal.SIGKILL)
        self.bot.wait(timeout=30)

    def close(self) -> None:
        if self.bot and self.bot.poll() is None:
            self.bot.send_signal(signal.SIGTERM)
            self.bot.wait(timeout=60)
        self.redis.terminate()
        self.redis.wait(timeout=30)
        self.log.close()


async def post(session: aiohttp.ClientSession, url: str, update: dict) -> int:
    try:
        async with session.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def deliver(url: str, updates: list[dict], until_accepted: bool = False, concurrency: int = 16) -> dict[int, float]:
    """POST every update (Telegram's delivery); with `until_accepted`, again after a refusal or an error. Returns the
    time each update was first POSTed."""
    sent, queue = {}, list(updates)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def sender() -> None:
            while queue:
                update = queue.pop(0)
                sent.setdefault(update["update_id"], time.perf_counter())
                while await post(session, url, update) != 200 and until_accepted:
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return sent


def burst(questions: list[str], count: int, first_chat: int) -> list[dict]:
    return [{**text_update(questions[i % len(questions)], chat_id=first_chat + i, user_id=first_chat + i), "update_id": first_chat + i}
            for i in range(count)]


async def wait_answered(server: Recorder, chats: list[int], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and not all(c in server.answers for c in chats):
        await asyncio.sleep(0.1)


async def until_a_third_answered(server: Recorder, chats: list[int]) -> None:
    while sum(1 for c in chats if c in server.answers) < len(chats) // 3:
        await asyncio.sleep(0.002)


def outcome(server: Recorder, chats: list[int]) -> dict:
    return {"chats": len(chats), "answered": sum(1 for c in chats if c in server.answers),
            "answered_twice": sum(1 for c in chats if len(server.answers.get(c, [])) > 1)}


async def bot_kill(server: Recorder, faq: list[str], n: int, workdir: Path) -> dict:
    stack = Stack(server, workdir / "bot-kill", f"http://127.0.0.1:{free_port()}", outbound=60)
    try:
        await stack.start_bot()
        updates = burst(faq, n, 100_000)
        chats = [u["message"]["chat"]["id"] for u in updates]
        await deliver(stack.env["WEBHOOK_URL"], updates)
        await until_a_third_answered(server, chats)
        await asyncio.sleep(0.008)  # between two answers (one every 16.7 ms), not right after one: see tests/test_recovery.py
        stack.kill_bot()
        before = sum(1 for c in chats if c in server.answers)
        await stack.start_bot()
        await deliver(stack.env["WEBHOOK_URL"], updates)  # everything, again
        await wait_answered(server, chats, 120)
        await asyncio.sleep(2)  # a second answer would come now
        return {"answered_before_kill": before, **outcome(server, chats)}
    finally:
        stack.close()


async def redis_kill(server: Recorder, faq: list[str], n: int, workdir: Path) -> dict:
    stack = Stack(server, workdir / "redis-kill", f"http://127.0.0.1:{free_port()}", outbound=60)
    try:
        await stack.start_bot()
        updates = burst(faq, n, 200_000)
        chats = [u["message"]["chat"]["id"] for u in updates]
        delivery = asyncio.create_task(deliver(stack.env["WEBHOOK_URL"], updates, until_accepted=True))
        await until_a_third_answered(server, chats)
        stack.redis.send_signal(signal.SIGKILL)
        stack.redis.wait(timeout=30)
        await asyncio.sleep(1)
        stack.redis = start_redis(stack.redis_port, workdir / "redis-kill", persist=True)
        restarted = time.perf_counter()
        await delivery
        deadline = time.perf_counter() + 120  # until every chat has its real answer (after "temporarily unavailable")
        while time.perf_counter() < deadline and not all(any("暂时不可用" not in t for _, t in server.answers.get(c, [])) for c in chats):
            await asyncio.sleep(0.1)
        recovered_s = round(time.perf_counter() - restarted, 1)
        await asyncio.sleep(2)
        unavailable = sum(1 for c in chats for _, text in server.answers.get(c, []) if "暂时不可用" in text)
        real = {c: [t for _, t in server.answers.get(c, []) if "暂时不可用" not in t] for c in chats}
        return {**outcome(server, chats), "told_unavailable": unavailable, "all_answered_after_restart_s": recovered_s,
                "answered_for_real": sum(1 for c in chats if real[c]), "real_answer_twice": sum(1 for c in chats if len(real[c]) > 1)}
    finally:
        stack.close()


async def mixed(server: Recorder, faq: list[str], n: int, models: str, workdir: Path) -> dict:
    llm_port = free_port()
    llmcore = subprocess.Popen([sys.executable, "-m", "llmcore", "serve", "--models", models, "--port", str(llm_port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack = Stack(server, workdir / "mixed", f"http://127.0.0.1:{llm_port}", outbound=30)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"http://127.0.0.1:{llm_port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        await stack.start_bot()
        rss_start = rss_mb(stack.bot.pid)
        questions = [q for pair in zip(faq, MODEL_QUESTIONS * (len(faq) // len(MODEL_QUESTIONS) + 1)) for q in pair]
        updates = burst(questions, n, 300_000)
        chats = [u["message"]["chat"]["id"] for u in updates]
        sent = await deliver(stack.env["WEBHOOK_URL"], updates, concurrency=32)
        await wait_answered(server, chats, 600)
        first = min(sent.values())
        faq_set = set(faq)
        faq_latency = sorted(server.answers[u["update_id"]][0][0] - sent[u["update_id"]] for u in updates
                             if u["message"]["text"] in faq_set and u["update_id"] in server.answers)
        ideal = sorted(max(0.0, (i + 1) / 30 - (sent[u["update_id"]] - first))
                       for i, u in enumerate(updates) if u["message"]["text"] in faq_set)
        log = (workdir / "mixed" / "bot.log").read_text(errors="replace")
        result = {**outcome(server, chats), "model_unavailable_fallbacks": log.count("model unavailable"),
                  "faq_p50_s": round(statistics.median(faq_latency), 2), "faq_p50_limit_alone_s": round(statistics.median(ideal), 2),
                  "decorations_sent": sum(1 for m, _ in server.calls if m in ("sendChatAction", "sendMessageDraft"))}
        return {**result, **await memory_after_bursts(stack, server, questions, n, rss_start)}
    finally:
        stack.close()
        llmcore.terminate()
        llmcore.wait(timeout=30)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


async def memory_after_bursts(stack: Stack, server: Recorder, questions: list[str], n: int, rss_start: float) -> dict:
    """The bot's RSS at start, after the burst, after idling, and after a second burst of as many new chats: memory
    that grew without bound would grow again with the second."""
    pid, figures = stack.bot.pid, {"rss_mb_start": rss_start, "rss_mb_after_burst": rss_mb(stack.bot.pid)}
    await asyncio.sleep(IDLE_S)
    figures["rss_mb_after_idle"] = rss_mb(pid)
    updates = burst(questions, n, 400_000)
    await deliver(stack.env["WEBHOOK_URL"], updates, concurrency=32)
    await wait_answered(server, [u["message"]["chat"]["id"] for u in updates], 600)
    figures["rss_mb_after_second_burst"] = rss_mb(pid)
    await asyncio.sleep(IDLE_S)
    figures["rss_mb_after_second_idle"] = rss_mb(pid)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--mixed", type=int, default=600)
    parser.add_argument("--models", help="registry for the mixed burst (default: skip it)")
    parser.add_argument("--only", choices=["bot-kill", "redis-kill", "mixed"], help="run one scenario")
    args = parser.parse_args()
    faq = [e.question for e in read_faq_file(DEMO_DATA)][:40]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ("bot-kill", "redis-kill", "mixed"):
            (workdir / name).mkdir()
        async with Recorder() as server:
            if args.only in (None, "bot-kill"):
                results["bot_kill"] = await bot_kill(server, faq, args.updates, workdir)
            if args.only in (None, "redis-kill"):
                results["redis_kill"] = await redis_kill(server, faq, args.updates, workdir)
            if args.models and args.only in (None, "mixed"):
                results["mixed"] = await mixed(server, faq, args.mixed, args.models, workdir)
    for name, figures in results.items():
        print(f"{name:11s} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
