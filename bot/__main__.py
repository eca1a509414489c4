"""Kefu's bot from the command line.

    python -m bot up                          # everything on this machine (what `make run` runs)
    python -m bot run                         # long polling; a webhook when WEBHOOK_URL is set
    python -m bot shell [--var var]           # chat in the terminal (no Telegram needed; log in var/log/bot.log)
    python -m bot console [--link]            # the web console on CONSOLE_LISTEN; --link: a one-time login link, then exit
    python -m bot faq import FILE             # chat JSONL two-message conversations, or CSV question,answer
    python -m bot faq export [--out FILE]     # the FAQ as chat JSONL
    python -m bot faq match TEXT              # top matches with scores, as JSON (why an answer was chosen)
    python -m bot export --out FILE           # the training log as chat JSONL (no 👎, no fallbacks by default)

Settings come from the environment and `.env` (see README).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.encoder import load_encoder
from bot.exchanges import ExchangeLog
from bot.faq import FaqStore
from bot.settings import BotSettings
from bot.stack import StackError
from llmcore.chats import DataError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Kefu, the Telegram customer-service bot")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the bot: long polling, or a webhook when WEBHOOK_URL is set")
    shell = sub.add_parser("shell", help="chat in the terminal through the same handlers (no Telegram needed)")
    shell.add_argument("--var", default="var", help="the log goes to VAR/log/bot.log (warnings and errors also show in the terminal)")
    stack = sub.add_parser("up", help="everything on this machine: Redis, the model, llmcore serve, the bot (what `make run` runs)")
    stack.add_argument("--models", default="models", help="model registry folder (the demo model is trained into it if empty)")
    stack.add_argument("--var", default="var", help="folder for Redis data (AOF) and logs")
    console = sub.add_parser("console", help="the web console for admins and operators, on CONSOLE_LISTEN (docs/console.md)")
    console.add_argument("--link", action="store_true", help="print a one-time login link for the local admin (5 minutes) and exit")
    console.add_argument("--var", default="var", help="with --link: the folder of a running `bot up` (make run), whose Redis "
                         "and console the link is for")
    faq = sub.add_parser("faq", help="manage the FAQ").add_subparsers(dest="faq_command", required=True)
    faq_import = faq.add_parser("import", help="add entries from chat JSONL or CSV question,answer")
    faq_import.add_argument("file", help="a .jsonl or .csv file")
    faq_export = faq.add_parser("export", help="write the FAQ as chat JSONL")
    faq_export.add_argument("--out", help="output file (default: standard output)")
    faq_match = faq.add_parser("match", help="the top matches of a question, with scores, as JSON")
    faq_match.add_argument("text", help="the question")
    faq_match.add_argument("-k", type=int, default=3, help="how many matches")
    export = sub.add_parser("export", help="write the training log as chat JSONL")
    export.add_argument("--out", required=True, help="output file")
    export.add_argument("--include-down", action="store_true", help="also answers rated 👎")
    export.add_argument("--include-fallback", action="store_true", help="also fallback answers")
    export.add_argument("--include-smalltalk", action="store_true", help="also the canned small-talk replies")
    return parser


async def with_redis(settings: BotSettings, work: Callable[[Redis], Awaitable[int]]) -> int:
    redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
    try:
        return await work(redis)
    finally:
        await redis.aclose()


async def faq_command(args: argparse.Namespace, settings: BotSettings, redis: Redis) -> int:
    faq = FaqStore(redis, settings.redis_prefix, load_encoder(settings.faq_encoder))
    if args.faq_command == "import":
        print(f"imported {await faq.import_file(args.file)} entries")
    elif args.faq_command == "export":
        _write_lines(await faq.export_lines(), args.out)
    else:
        await faq.load_demo_if_empty()
        await faq.ready()  # one question: the whole matcher, however long the first build takes
        matches = await faq.match(args.text, k=args.k)
        print(json.dumps([{"id": m.entry.id, "score": round(m.score, 4), "lexical": round(m.lexical, 4),
                           "semantic": None if m.semantic is None else round(m.semantic, 4),
                           "answer_cosine": None if m.answer_cosine is None else round(m.answer_cosine, 4),
                           "unknown": None if m.unknown is None else round(m.unknown, 4), "encoder": m.encoder, "matched": m.matched,
                           "question": m.entry.question, "answer": m.entry.answer} for m in matches], ensure_ascii=False, indent=2))
    return 0


async def export_command(args: argparse.Namespace, settings: BotSettings, redis: Redis) -> int:
    log = ExchangeLog(redis, settings.redis_prefix, settings.log_retention_days)
    records = log.conversations(args.include_down, args.include_fallback, args.include_smalltalk)
    lines = [json.dumps(c, ensure_ascii=False) async for c in records]
    _write_lines(lines, args.out)
    print(f"wrote {len(lines)} conversations to {args.out}", file=sys.stderr)
    return 0


def _write_lines(lines: list[str], out: str | None) -> None:
    text = "".join(line + "\n" for line in lines)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def console_command(args: argparse.Namespace, settings: BotSettings) -> int:
    from bot.console.serve import local_admin_link, serve
    from bot.stack import attach

    if args.link:
        print(asyncio.run(local_admin_link(attach(settings, Path(args.var)))))
    else:
        serve(settings)
    return 0


def run(settings: BotSettings) -> None:
    from bot.app import build_application, run_polling, run_webhook

    application = build_application(settings)
    asyncio.run(run_webhook(application, settings) if settings.webhook_url else run_polling(application))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Bot API call would bury the log (and name the token)
    try:
        settings = BotSettings()
        if args.command == "run":
            run(settings)
        elif args.command == "up":
            from bot.stack import up

            return up(Path(args.models), Path(args.var))
        elif args.command == "shell":
            from bot.shell import main as shell_main

            shell_main(settings, Path(args.var) / "log")
        elif args.command == "console":
            return console_command(args, settings)
        elif args.command == "faq":
            return asyncio.run(with_redis(settings, lambda r: faq_command(args, settings, r)))
        else:
            return asyncio.run(with_redis(settings, lambda r: export_command(args, settings, r)))
    except ValidationError as exc:
        print("error: invalid settings: " + "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RedisError, OSError) as exc:
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
