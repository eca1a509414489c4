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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private redis-server on a free loopback port, started for this session and stopped after it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"redis-server did not start on port {port}")
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
