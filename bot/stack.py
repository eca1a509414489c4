"""The whole product on one machine, one command (what `make run` starts):

    python -m bot up [--models models] [--var var]

1. Redis: REDIS_URL when it is set; otherwise a private redis-server child on a unix socket under
   `var/redis/`, with AOF persistence there (a second run finds everything again).
2. The model: when the registry has no current version, the demo model is trained first (progress bar,
   about 3 minutes on 2 CPU cores) and promoted.
3. `llmcore serve` as a child on a free loopback port (or LLMCORE_URL when it is set).
4. The console (`python -m bot console`) as a child on CONSOLE_LISTEN (a free port when 8480 is taken and none was
   set), logging to `var/log/console.log`; its URL and a one-time login link for the local admin are printed.
5. The bot: with TELEGRAM_BOT_TOKEN the real one (polling, or a webhook with WEBHOOK_URL), logging to stderr;
   without it the terminal chat on the same stack, logging to `var/log/bot.log` (warnings and errors also on the
   terminal). llmcore logs to `var/log/llmcore.log`, Redis to `var/redis/redis.log`.

Ctrl-C or SIGTERM stops every child (Redis writes its AOF and exits); children also die with this
process if it is killed outright (PR_SET_PDEATHSIG), so nothing is left behind.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bot.settings import BotSettings

logger = logging.getLogger(__name__)
READY_TIMEOUT_S = 90
PR_SET_PDEATHSIG = 1
RUNNING = "stack.json"  # where the running stack's Redis and console are, for `python -m bot console --link`


class StackError(RuntimeError):
    """Something the user must fix; the message says what."""


def demo_training_command(models: Path, minutes: float = 3) -> list[str]:
    """How `make run` trains the demo model when there is none: the knowledge base by heart (no validation split,
    no dropout). bench/demo_kb.py and the by-heart test train exactly this way."""
    return [sys.executable, "-m", "llmcore", "train", "--arch", "transformer", "--models", str(models),
            "--max-minutes", str(minutes), "--val-fraction", "0", "--dropout", "0", "--promote"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # the terminal's Ctrl-C goes to us; we stop the children in order
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Stack:
    def __init__(self, models: Path, var: Path) -> None:
        self.models = models
        self.var = var
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run `make run` (it installs it) or set REDIS_URL")
        folder = self.var / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        sock = folder / "redis.sock"
        sock.unlink(missing_ok=True)
        log = open(folder / "redis.log", "ab")
        process = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock.resolve()), "--unixsocketperm", "700",
                                    "--dir", str(folder.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
                                    "--save", "", "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.children.append(("redis", process))
        _wait_for(lambda: sock.exists() and _unix_ping(sock), process, "redis-server", folder / "redis.log")
        logger.info("redis: private server on %s (data and AOF in %s)", sock, folder)
        return f"unix://{sock.resolve()}"

    def ensure_model(self) -> None:
        current = self.models / "current"
        if current.is_symlink():
            return
        logger.info("no model yet in %s: training the demo model first (about 3 minutes on 2 CPU cores)", self.models)
        done = subprocess.run(demo_training_command(self.models), stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise StackError(f"training the demo model failed (exit {done.returncode}); see the lines above")

    def start_llmcore(self, admin_token: str) -> str:
        port = _free_port()
        folder = self.var / "log"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "llmcore.log", "ab")
        env = {**os.environ, "LLMCORE_ADMIN_TOKEN": admin_token}
        process = subprocess.Popen([sys.executable, "-m", "llmcore", "serve", "--models", str(self.models), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        self.children.append(("llmcore", process))
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _http_ok(url + "/healthz"), process, "llmcore serve", folder / "llmcore.log")
        logger.info("llmcore: serving %s at %s (log: %s)", self.models, url, folder / "llmcore.log")
        return url

    def start_console(self, settings: BotSettings) -> None:
        folder = self.var / "log"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "console.log", "ab")
        token = settings.llmcore_admin_token.get_secret_value() if settings.llmcore_admin_token else ""
        env = {**os.environ, "REDIS_URL": settings.redis_url, "LLMCORE_URL": settings.llmcore_url, "LLMCORE_ADMIN_TOKEN": token,
               "CONSOLE_LISTEN": settings.console_listen}
        process = subprocess.Popen([sys.executable, "-m", "bot", "console"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=_die_with_parent)
        self.children.append(("console", process))
        host, port = settings.console_host_port
        _wait_for(lambda: _http_ok(f"http://{_loopback(host)}:{port}/login"), process, "the console", folder / "console.log")
        logger.info("console: %s (log: %s)", settings.console_base, folder / "console.log")

    def note_running(self, settings: BotSettings) -> None:
        """Where this stack's Redis and console are (no secrets), so that `bot console --link` finds them."""
        path = self.var / RUNNING
        path.write_text(json.dumps({"redis_url": settings.redis_url, "console_url": settings.console_base, "pid": os.getpid()}))
        path.chmod(0o600)

    def stop(self) -> None:
        """Children in reverse order: llmcore, then Redis (which writes its AOF on SIGTERM)."""
        (self.var / RUNNING).unlink(missing_ok=True)
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in 15 s: killed", name)
                    process.kill()
                    process.wait()
            logger.info("%s stopped", name)
        self.children.clear()


def up(models: Path, var: Path) -> int:
    from bot.console.serve import local_admin_link  # the console's web stack, only when the whole product starts

    base = BotSettings()  # bad settings stop here, with one line naming the variable
    stack = Stack(models, var)
    overrides: dict = {}
    try:
        with _terminate_on_sigterm():
            if "redis_url" not in base.model_fields_set:
                overrides["redis_url"] = stack.start_redis()
            if "llmcore_url" in base.model_fields_set:
                if not _http_ok(base.llmcore_url + "/healthz"):
                    raise StackError(f"LLMCORE_URL={base.llmcore_url} does not answer on /healthz")
            else:
                stack.ensure_model()
                token = base.llmcore_admin_token.get_secret_value() if base.llmcore_admin_token else secrets.token_urlsafe(24)
                overrides.update(llmcore_url=stack.start_llmcore(token), llmcore_admin_token=token)
            if "console_listen" not in base.model_fields_set and not _port_free(base.console_host_port):
                overrides["console_listen"] = f"127.0.0.1:{_free_port()}"
            settings = BotSettings(**{**base.model_dump(exclude_unset=False), **overrides})
            stack.start_console(settings)
            stack.note_running(settings)
            print(f"Console: {settings.console_base}\nLog in to it (a one-time link, valid for 5 minutes; "
                  f"`python -m bot console --link` makes another): {asyncio.run(local_admin_link(settings))}", flush=True)
            _run_bot(settings, var / "log")
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def attach(settings: BotSettings, var: Path) -> BotSettings:
    """These settings pointed at the stack `bot up` runs from `var` (its private Redis, its console's URL), for what this
    process does not set itself; unchanged when no stack runs there."""
    try:
        running = json.loads((var / RUNNING).read_text())
        os.kill(int(running["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return settings
    overrides = {key: running[key] for key in ("redis_url", "console_url") if key not in settings.model_fields_set}
    return BotSettings(**{**settings.model_dump(exclude_unset=False), **overrides}) if overrides else settings


def _run_bot(settings: BotSettings, logs: Path) -> None:
    if settings.telegram_bot_token is None:
        from bot.shell import log_to_file, run_shell, stdin_reader

        print("No TELEGRAM_BOT_TOKEN: chatting in the terminal on the same stack. To connect Telegram, put "
              "TELEGRAM_BOT_TOKEN=<token from @BotFather> in .env and run `make run` again.\n"
              f"Log: {log_to_file(logs)} (warnings and errors also show here).", flush=True)

        asyncio.run(_shell(settings, run_shell, stdin_reader))
        return
    from bot.app import build_application, run_polling, run_webhook

    application = build_application(settings)
    asyncio.run(run_webhook(application, settings) if settings.webhook_url else run_polling(application))


async def _shell(settings: BotSettings, run_shell, stdin_reader) -> None:
    await run_shell(settings, read=await stdin_reader())


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: the children are stopped in order."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for(ready, process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise StackError(f"{name} exited with status {process.returncode}: " + (" | ".join(tail) or f"see {log}"))
        if ready():
            return
        time.sleep(0.1)
    raise StackError(f"{name} was not ready after {READY_TIMEOUT_S} s; see {log}")


def _unix_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(0.5)
            conn.connect(str(path))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _port_free(host_port: tuple[str, int]) -> bool:
    with socket.socket() as s:
        try:
            s.bind(host_port)
        except OSError:
            return False
    return True


def _loopback(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
