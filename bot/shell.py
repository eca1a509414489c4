"""Chat with Kefu in the terminal through the same handlers and pipeline as Telegram, with real Redis and
llmcore: the Bot API calls the handlers make are answered here (a PTB request class) instead of by Telegram.

    python -m bot shell [--var var]   # type a question; "#2" presses the second button under the last answer

Nothing else differs from Telegram: updates are built as Telegram would send them and go through
`Application.process_update`. Log lines go to `var/log/bot.log`; the terminal shows only warnings and errors
between the messages.
"""
from __future__ import annotations

import asyncio
import html
import inspect
import itertools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

from telegram import Update
from telegram.request import BaseRequest, RequestData

from bot.app import build_application, running
from bot.settings import BotSettings

BOT_USER = {"id": 1, "is_bot": True, "first_name": "Kefu", "username": "kefu_shell_bot"}
SHELL_USER = {"id": 10_000, "is_bot": False, "first_name": "You", "language_code": "zh-hans"}
LOG_MAX_BYTES = 10 * 2**20
LOG_BACKUPS = 3


class TerminalRequest(BaseRequest):
    """Answers Bot API methods locally: messages are printed, buttons remembered so they can be pressed."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self.buttons: list[tuple[str, str, int]] = []  # (label, callback_data, message_id)
        self._message_ids = itertools.count(1)

    @property
    def read_timeout(self) -> float | None:
        return None

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None, read_timeout=None,
                         write_timeout=None, connect_timeout=None, pool_timeout=None) -> tuple[int, bytes]:
        name = url.rsplit("/", 1)[-1]
        params = request_data.parameters if request_data else {}
        result = self.answer(name, params)
        return 200, json.dumps({"ok": True, "result": result}).encode()

    def answer(self, name: str, params: dict) -> object:
        if name == "getMe":
            return BOT_USER
        if name in ("sendMessage", "editMessageText"):
            return self._show(params)
        if name == "answerCallbackQuery" and params.get("text"):
            self.write(f"  ({params['text']})")
        return True  # sendChatAction, sendMessageDraft, setMyCommands, deleteWebhook, ...

    def _show(self, params: dict) -> dict:
        text = html.unescape(params.get("text", "")) if params.get("parse_mode") == "HTML" else params.get("text", "")
        message_id = int(params.get("message_id") or next(self._message_ids))
        self.write(f"kefu> {text}")
        markup = params.get("reply_markup")
        markup = json.loads(markup) if isinstance(markup, str) else markup
        rows = (markup or {}).get("inline_keyboard", [])
        if rows:
            self.buttons = [(b["text"], b["callback_data"], message_id) for row in rows for b in row if "callback_data" in b]
            self.write("      " + "  ".join(f"#{i} {label}" for i, (label, _, _) in enumerate(self.buttons, 1)))
        return {"message_id": message_id, "date": int(time.time()), "chat": {"id": SHELL_USER["id"], "type": "private"},
                "from": BOT_USER, "text": text}


def make_update(line: str, request: TerminalRequest, update_id: int) -> dict | None:
    """A message update for typed text, or a callback update for "#N"; None for an unknown button number."""
    chat = {"id": SHELL_USER["id"], "type": "private", "first_name": SHELL_USER["first_name"]}
    if line.startswith("#") and line[1:].isdigit():
        index = int(line[1:]) - 1
        if not 0 <= index < len(request.buttons):
            return None
        _, data, message_id = request.buttons[index]
        message = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": BOT_USER, "text": "…"}
        return {"update_id": update_id, "callback_query": {"id": str(update_id), "from": SHELL_USER, "chat_instance": "shell",
                                                           "message": message, "data": data}}
    message = {"message_id": 10_000 + update_id, "date": int(time.time()), "chat": chat, "from": SHELL_USER, "text": line}
    if line.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(line.split()[0])}]
    return {"update_id": update_id, "message": message}


async def stdin_reader() -> Callable[[str], Awaitable[str]]:
    """Lines from standard input without a thread (a thread blocked in input() would keep Ctrl-C from exiting)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = await reader.readline()
        if not line:
            raise EOFError
        return line.decode("utf-8", errors="replace").rstrip("\r\n")
    return read


async def run_shell(settings: BotSettings, read: Callable[[str], str | Awaitable[str]] = input,
                    write: Callable[[str], None] = print) -> None:
    request = TerminalRequest(write)
    application = build_application(settings, token="0:shell", request=request)
    loop = asyncio.get_running_loop()

    async def next_line() -> str:
        if inspect.iscoroutinefunction(read):
            return await read("you> ")
        return await loop.run_in_executor(None, read, "you> ")

    async with running(application) as kefu:
        if kefu.faq.building:  # a person at a terminal is answered by the whole matcher, not BM25 alone meanwhile
            write("Encoding the FAQ's questions once (the first start; later starts read them from Redis)...")
        await kefu.faq.ready()
        write(f"Kefu shell — FAQ entries: {await _count(kefu)}, model: {settings.llmcore_url}. "
              "Type a question; #N presses a button; Ctrl-D quits.")
        for update_id in itertools.count(int(time.time() * 1000)):  # increasing across restarts: no false duplicates
            try:
                line = (await next_line()).strip()
            except (EOFError, KeyboardInterrupt):
                write("")
                return
            data = make_update(line, request, update_id) if line else None
            if data is None:
                if line:
                    write("  (no such button)")
                continue
            await application.process_update(Update.de_json(data, application.bot))


async def _count(kefu) -> str:
    try:
        return str(await kefu.faq.count())
    except Exception as exc:  # Redis down: the shell still starts and says so
        return f"unknown ({exc.__class__.__name__})"


def log_to_file(folder: Path) -> Path:
    """Every log line to FOLDER/bot.log; the terminal keeps warnings and errors only (the job queue's INFO lines
    every minute would land in the middle of the prompt). Returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bot.log"
    root = logging.getLogger()
    consoles = list(root.handlers)  # basicConfig's stderr handler
    for console in consoles:
        console.setLevel(max(console.level, logging.WARNING))
    handler = RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(consoles[0].formatter if consoles else None)
    root.addHandler(handler)
    return path


def main(settings: BotSettings, logs: Path) -> None:
    print(f"Log: {log_to_file(logs)} (warnings and errors also show here).", flush=True)
    try:
        asyncio.run(run_shell(settings))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
