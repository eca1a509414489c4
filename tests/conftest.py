"""Shared fixtures: a private Redis server for the session, tiny tokenizers and models, data paths."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, workdir: Path, persist: bool = False) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port, ready when this returns; with `persist`, an AOF in workdir that a
    restarted server reads back (as in production)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir),
         *(("--appendonly", "yes", "--appendfsync", "always") if persist else ("--appendonly", "no"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server did not start on port {port}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private redis-server on a free loopback port, started for this session and stopped after it."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def shared_file(name: str) -> Path:
    """A file from ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (it lives beside the repo in ../shared/data)")
    return path


FAQ_PAIRS = [
    ("怎么退货？", "七天内可以在订单页申请退货。"),
    ("运费多少钱？", "满69元包邮，不满收8元。"),
    ("How do I reset my password?", "Tap Forgot password on the login page."),
    ("客服电话是多少？", "客服电话400-820-6688。"),
    ("Do you ship abroad?", "Sorry, we only ship within mainland China."),
    ("可以开发票吗？", "可以，下单时选择电子发票即可。"),
]


@pytest.fixture
def faq_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "faq.chat.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, ensure_ascii=False)
             for q, a in FAQ_PAIRS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own: tests share the session's Redis without seeing each other's keys."""
    import uuid

    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def redis(redis_url: str):
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def keys_with(redis, prefix: str, needle: str) -> list[str]:
    """Keys under prefix whose name, or value of any type, contains needle (a scan as an auditor would run it)."""
    found = []
    async for key in redis.scan_iter(f"{prefix}*"):
        kind = await redis.type(key)
        if kind == "string":
            blob = await redis.get(key) or ""
        elif kind == "list":
            blob = " ".join(await redis.lrange(key, 0, -1))
        elif kind == "set":
            blob = " ".join(await redis.smembers(key))
        elif kind == "hash":
            blob = " ".join(f"{k} {v}" for k, v in (await redis.hgetall(key)).items())
        elif kind == "stream":
            blob = " ".join(f"{i} {f}" for i, f in await redis.xrange(key))
        else:
            blob = ""
        if needle in key or needle in blob:
            found.append(key)
    return found


TINY_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 96, "dropout": 0.0}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one tiny Transformer that learned FAQ_PAIRS by heart (v0001, current); no evidence in its
    prompts (every FAQ pair has its own answer: evidence from the others would only teach it to ignore evidence),
    and its greedy answer served as it is (selection off: the bot's tests predict an answer from the question
    alone, whatever history the bot sends, and see it streamed token by token; tests/test_selection.py serves a
    copy that chooses)."""
    import json

    from llmcore.selection import GREEDY
    from llmcore.train import TrainOptions, train

    root = tmp_path_factory.mktemp("tiny-models")
    data = root / "faq.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                                         ensure_ascii=False) for q, a in FAQ_PAIRS) + "\n")
    train(TrainOptions(data=[str(data)], arch="transformer", models=str(root / "reg"), epochs=120, val_fraction=0.0, lr=5e-3,
                       seed=0, promote=True, progress=False, min_freq=1, model_overrides=TINY_MODEL, device="cpu",
                       evidence_k=0, selection=GREEDY))
    return root / "reg"


async def serve_app(app):
    """An aiohttp application on a free loopback port: (runner, base URL); `await runner.cleanup()` stops it."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def serve_models(root: Path, admin_token: str | None = None, max_batch: int = 16):
    """The real inference service over a registry folder, on the CPU: (runner, base URL)."""
    import torch

    from llmcore.registry import Registry
    from llmcore.server import create_app
    from llmcore.settings import ServeSettings
    from llmcore.worker import Worker

    worker = Worker(Registry(root), torch.device("cpu"), max_batch=max_batch)
    return await serve_app(create_app(ServeSettings(models=root, admin_token=admin_token, request_timeout_s=30), worker))


@pytest.fixture(scope="session")
async def llmcore_url(tiny_models: Path):
    """The real inference service on a free loopback port, serving tiny_models."""
    runner, url = await serve_models(tiny_models)
    yield url
    await runner.cleanup()


@pytest.fixture
async def telegram():
    """The local Bot API server (tests/botapi.py) on a free port."""
    from .botapi import BotApiServer

    async with BotApiServer() as server:
        yield server


@pytest.fixture
async def seeded(redis, prefix):
    """A FAQ store under this test's prefix holding the first three FAQ_PAIRS."""
    from bot.faq import FaqStore
    from bot.search import FaqEntry

    faq = FaqStore(redis, prefix)
    await faq.add_many([FaqEntry("", q, a) for q, a in FAQ_PAIRS[:3]])
    return faq
