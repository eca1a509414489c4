"""Admin commands, for the Telegram users in ADMIN_IDS only; anyone else gets "not allowed", an audit log
line, and nothing runs.

    /retrain [lstm|transformer] [minutes]   train on the logged conversations; progress edited in place
    /train_status  /models  /promote V  /rollback
    /stats  /export  /why (as a reply to an answer)
    /faq_add  /faq_del  /faq_list  /faq_pending, and FAQ documents: bot/faqadmin.py (registered here, behind the same filter)
    /console (admins and operators, in a private chat): a one-time login link to the web console

A /retrain's job id and progress message live in Redis, so a restarted bot picks the watch up again.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import io
import json
import logging
import re
import uuid

from redis.exceptions import RedisError
from telegram import (
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    MenuButtonWebApp,
    Message,
    Update,
    WebAppInfo,
)
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from bot.console.auth import LINK_TTL_S, ConsoleAuth, Person
from bot.console.people import role_for
from bot.context import Context
from bot.faqadmin import QUOTE_CHARS, decide_wording, faq_add, faq_del, faq_document, faq_list, faq_pending
from bot.handlers import COMMANDS
from bot.llm import AdminError, AdminUnreachable
from bot.services import Services
from bot.split import clip
from bot.stats import chart, collect, format_stats
from bot.texts import language
from bot.trainingset import build_training_set

logger = logging.getLogger(__name__)
ADMIN_COMMANDS = [("retrain", "retrain on the logged conversations: [lstm|transformer] [minutes]"),
                  ("train_status", "the training job's progress"), ("models", "model versions and their metrics"),
                  ("promote", "serve version V"), ("rollback", "back to the previous version"), ("stats", "usage numbers"),
                  ("faq_add", "question || answer"), ("faq_del", "remove FAQ entry ID"), ("faq_list", "the FAQ entries"),
                  ("faq_pending", "customers' wordings proposed as FAQ questions"),
                  ("export", "the training data as JSONL"), ("why", "reply to an answer: where it came from")]
CONSOLE_COMMAND = [("console", "a one-time login link to the web console")]  # operators may use it too: not in ADMIN_COMMANDS
WATCH_EVERY_S = 2.0
BAR_WIDTH = 20
VERSION = re.compile(r"v[0-9]{4,}")
JOB_KEY = "retrain"  # Redis key (under the prefix) of the job being watched


def register(application: Application, admin_ids: frozenset[int]) -> None:
    admins = filters.User(user_id=admin_ids) if admin_ids else filters.User(user_id=[])
    new = filters.UpdateType.MESSAGE
    for name, handler in (("retrain", retrain), ("train_status", train_status), ("models", models), ("promote", promote),
                          ("rollback", rollback), ("stats", stats), ("faq_add", faq_add), ("faq_del", faq_del),
                          ("faq_list", faq_list), ("faq_pending", faq_pending), ("export", export), ("why", why)):
        application.add_handler(CommandHandler(name, handler, filters=new & admins))
    application.add_handler(CommandHandler([name for name, _ in ADMIN_COMMANDS], not_allowed, filters=new))
    application.add_handler(CommandHandler("console", console_login, filters=new & filters.ChatType.PRIVATE))
    application.add_handler(MessageHandler(new & admins & filters.ChatType.PRIVATE & filters.Document.ALL, faq_document))
    application.add_handler(CallbackQueryHandler(decide, pattern=r"^job:(promote|discard):"))
    application.add_handler(CallbackQueryHandler(decide_wording, pattern=r"^fp:(ok|no):"))


async def set_commands(application: Application, admin_ids: frozenset[int], console_url: str | None = None) -> None:
    """Admins see their commands too (a chat scope each), and the console as a Mini App menu button when it has an https
    CONSOLE_URL (Telegram opens only https); an admin who never opened the bot is skipped."""
    commands = [BotCommand(n, d) for n, d in COMMANDS + ADMIN_COMMANDS + CONSOLE_COMMAND]
    for admin_id in admin_ids:
        try:
            await application.bot.set_my_commands(commands, scope=BotCommandScopeChat(admin_id))
            if console_url and console_url.startswith("https://"):
                button = MenuButtonWebApp("Console", WebAppInfo(console_url.rstrip("/") + "/app"))
                await application.bot.set_chat_menu_button(chat_id=admin_id, menu_button=button)
        except TelegramError as exc:
            logger.info("admin commands not set for %s: %s", admin_id, exc)


async def resume(application: Application, kefu: Services) -> None:
    """After a restart: keep watching a /retrain that was running."""
    try:
        watched = await kefu.redis.get(kefu.settings.redis_prefix + JOB_KEY)
    except RedisError:
        return
    if watched and application.job_queue is not None:
        application.job_queue.run_repeating(watch_job, interval=WATCH_EVERY_S, first=0.5, data=json.loads(watched), name="retrain")


async def not_allowed(update: Update, context: Context) -> None:
    """An admin command from someone who is not an admin."""
    user = update.effective_user
    logger.warning("audit: user %s (@%s) tried %r: not an admin", user.id if user else None, user.username if user else None,
                   (update.effective_message.text or "")[:100])
    await update.effective_message.reply_text("Not allowed. / 无权限。")


async def console_login(update: Update, context: Context) -> None:
    """/console in a private chat: a one-time login link to the web console, for admins and operators only."""
    kefu, user, message = context.kefu, update.effective_user, update.effective_message
    role = await role_for(kefu.settings, context.bot, user.id)
    if role is None:
        await not_allowed(update, context)
        return
    auth = ConsoleAuth.from_settings(kefu.redis, kefu.settings)
    lang = language(None, user.language_code)
    token = await auth.issue_link(Person(user.id, user.first_name[:64], role, lang))
    logger.info("audit: console login link for user %s (%s)", user.id, role)
    url = f"{kefu.settings.console_base}/login/{token}"
    note = (f"一次性登录链接，{LINK_TTL_S // 60} 分钟内有效：\n{url}" if lang == "zh"
            else f"Your one-time console login link (valid for {LINK_TTL_S // 60} minutes):\n{url}")
    await message.reply_text(note, link_preview_options=LinkPreviewOptions(is_disabled=True))  # a preview would open it


async def retrain(update: Update, context: Context) -> None:
    """/retrain [lstm|transformer] [minutes]: one job at a time, progress edited in place."""
    kefu, message = context.kefu, update.effective_message
    try:
        arch, minutes = _retrain_args(context.args or [], kefu.settings.retrain_minutes)
    except ValueError as exc:
        await message.reply_text(f"{exc}\nUsage: /retrain [lstm|transformer] [minutes]")
        return
    try:
        job = await start_retrain(kefu, arch, minutes)
    except RetrainRefused as exc:
        await message.reply_text(str(exc))
        return
    progress = await message.reply_text(job_text(job))
    watched = {"job_id": job["id"], "chat_id": progress.chat_id, "message_id": progress.message_id}
    await kefu.redis.set(kefu.settings.redis_prefix + JOB_KEY, json.dumps(watched))
    context.job_queue.run_repeating(watch_job, interval=WATCH_EVERY_S, first=WATCH_EVERY_S, data=watched, name="retrain")


class RetrainRefused(Exception):
    """No job was started; the message says why, for the admin."""


async def start_retrain(kefu: Services, arch: str, minutes: float) -> dict:
    """A training job on llmcore over the training set (one at a time; enough data): the job as llmcore reports it.
    /retrain and the console's Models page both start jobs here."""
    running = await kefu.admin.job()
    if running is not None and running["status"] == "running":
        raise RetrainRefused("A training job is already running:\n" + job_text(running))
    conversations = await build_training_set(kefu.log, kefu.faq, kefu.settings.model_history)
    if len(conversations) < kefu.settings.min_training_conversations:
        raise RetrainRefused(f"Too little data to retrain: {len(conversations)} conversations "
                             f"(at least {kefu.settings.min_training_conversations}). Nothing was started.")
    request_id = uuid.uuid4().hex
    try:
        return await kefu.admin.train(conversations, arch, minutes, kefu.settings.retrain_shape, request_id)
    except AdminUnreachable:  # the answer was lost, not necessarily the request: the job this request started, if any
        started = await kefu.admin.job()
        if started is not None and started.get("request_id") == request_id:
            return started
        raise


def _retrain_args(args: list[str], default_minutes: float) -> tuple[str, float]:
    arch, minutes = "transformer", default_minutes
    for arg in args:
        if arg.lower() in ("lstm", "transformer"):
            arch = arg.lower()
        else:
            try:
                minutes = float(arg)
            except ValueError:
                raise ValueError(f"Unknown argument {arg[:40]!r}.") from None
            if not 0 < minutes <= 120:
                raise ValueError("Minutes must be between 0 and 120.")
    return arch, minutes


async def watch_job(context: Context) -> None:
    """Every few seconds: edit the progress message; at the end the curve, the comparison, the decision.
    llmcore away (restarting): bot.errors logs it, and the next tick asks again."""
    kefu, watched = context.kefu, context.job.data
    job = await kefu.admin.job()
    if job is None or job["id"] != watched["job_id"]:  # it ended while no bot watched, and another started (the console)
        context.job.schedule_removal()  # it was polled every few seconds for good, resumed at every restart
        if await kefu.redis.delete(kefu.settings.redis_prefix + JOB_KEY):
            with contextlib.suppress(TelegramError):
                await context.bot.send_message(watched["chat_id"], f"The training job {watched['job_id']} is no longer llmcore's "
                                               "latest: its result is under /models.")
        return
    text = job_text(job)
    with contextlib.suppress(TelegramError):  # "message is not modified" when nothing moved
        await context.bot.edit_message_text(text, watched["chat_id"], watched["message_id"])
    if job["status"] == "running":
        return
    context.job.schedule_removal()
    if await kefu.redis.delete(kefu.settings.redis_prefix + JOB_KEY):  # one report, however many bot replicas watch
        await report_job(context, kefu, job, watched["chat_id"])


async def report_job(context: Context, kefu: Services, job: dict, chat_id: int) -> None:
    if job["status"] == "failed":
        await context.bot.send_message(chat_id, f"❌ Training failed: {job.get('error')}\nThe served model is unchanged.")
        return
    version = job["version"]
    with contextlib.suppress(AdminError, TelegramError):
        await context.bot.send_photo(chat_id, InputFile(io.BytesIO(await kefu.admin.loss_curve(version)), filename="loss.png"),
                                     caption=f"{version}: loss curve")
    table = comparison_table(job)
    if job["status"] == "promoted":
        await context.bot.send_message(chat_id, f"✅ {version} is better and now serves.\n{table}", parse_mode="HTML")
        return
    buttons = InlineKeyboardMarkup([[InlineKeyboardButton("Promote", callback_data=f"job:promote:{job['id']}"),
                                     InlineKeyboardButton("Discard", callback_data=f"job:discard:{job['id']}")]])
    await context.bot.send_message(chat_id, f"{version} is not better than the current version.\n{table}", parse_mode="HTML",
                                   reply_markup=buttons)


def comparison_table(job: dict) -> str:
    result, compare = job.get("result") or {}, (job.get("result") or {}).get("compare") or {}
    new = {key: compare.get(f"new_{key}", result.get(key)) for key in ("val_char_f1", "val_loss_per_char")}  # compare_with
    rows = [("", result.get("version", "new"), compare.get("version", "current")),
            ("char-F1", _num(new["val_char_f1"]), _num(compare.get("val_char_f1"))),
            ("BM25 look", _num(result.get("val_baseline_char_f1")), "—"),
            ("loss/char", _num(new["val_loss_per_char"]), _num(compare.get("val_loss_per_char"))),
            ("ppl", _num(result.get("val_ppl")), "—")]
    lines = [f"{a:<10}{b:>10}{c:>10}" for a, b, c in rows]
    held_out = result.get("val_char_f1_turns")
    note = (f"\non the same {held_out} held-out answers; BM25 look(up): char-F1 of the stored answer to the nearest stored "
            "question — a model must beat it" if held_out else "")
    if compare.get("left_out"):  # llmcore.comparison.compare_with
        note += (f"\nchar-F1 and loss/char of both on the {compare['conversations']} held-out conversations the current "
                 f"version did not train on ({compare.get('turns', 0)} answers; it trained on {compare['left_out']}); BM25 and "
                 "ppl on all")
    return "<pre>" + html.escape("\n".join(lines)) + "</pre>" + note


def job_text(job: dict) -> str:
    progress = job.get("progress") or {}
    stage = progress.get("stage", "starting")
    lines = [f"Training job {job['id']} ({job.get('arch')}, {job.get('num_conversations')} conversations): {job['status']}"]
    if job["status"] == "running":
        done = float(progress.get("progress") or 0)
        bar = "█" * round(done * BAR_WIDTH) + "░" * (BAR_WIDTH - round(done * BAR_WIDTH))
        lines.append(f"{stage} {bar} {done:.0%}")
        if stage == "training":
            lines.append(f"epoch {progress.get('epoch')} · step {progress.get('step')} · loss {progress.get('loss')} · "
                         f"{progress.get('tokens_per_s')} tok/s · ETA {_eta(progress.get('eta_s'))}")
    elif job.get("version"):
        lines.append(f"version {job['version']}")
    return "\n".join(lines)


async def decide(update: Update, context: Context) -> None:
    """[Promote] / [Discard] under a retrained version that was not better."""
    query, kefu = update.callback_query, context.kefu
    if not await context.admin_pressed(query):
        return
    _, decision, job_id = query.data.split(":", 2)
    result = await kefu.admin.decide(job_id, decision)
    await query.answer()
    with contextlib.suppress(TelegramError):
        await query.edit_message_reply_markup(None)
    note = f"✅ {result.get('current')} now serves." if decision == "promote" else "Discarded: the current version keeps serving."
    await query.message.reply_text(note)


async def train_status(update: Update, context: Context) -> None:
    """The latest training job."""
    job = await context.kefu.admin.job()
    await update.effective_message.reply_text(job_text(job) if job else "No training job yet.")


async def models(update: Update, context: Context) -> None:
    """Versions with their metrics; which one serves."""
    listing = await context.kefu.admin.versions()
    lines = []
    for v in listing["versions"][-15:]:
        m, mark = v["metrics"], " ← current" if v["version"] == listing["current"] else ""
        lines.append(f"{v['version']} {m.get('arch', '?')} F1 {_num(m.get('val_char_f1'))} ppl {_num(m.get('val_ppl'))} "
                     f"{(m.get('created') or '')[:16]}{mark}")
    await update.effective_message.reply_text("\n".join(lines) or "No versions yet.")


async def promote(update: Update, context: Context) -> None:
    """/promote V"""
    args = context.args or []
    if len(args) != 1 or not VERSION.fullmatch(args[0]):
        await update.effective_message.reply_text("Usage: /promote v0003 (see /models)")
        return
    result = await context.kefu.admin.promote(args[0])
    await update.effective_message.reply_text(f"✅ {result['current']} now serves.")


async def rollback(update: Update, context: Context) -> None:
    """Back to the version that served before."""
    result = await context.kefu.admin.rollback()
    await update.effective_message.reply_text(f"↩️ Rolled back: {result['current']} now serves.")


async def stats(update: Update, context: Context) -> None:
    """Usage numbers and a chart."""
    kefu = context.kefu
    numbers = await collect(kefu.log, handoffs=kefu.handoffs)
    try:
        served = await kefu.admin.versions()
    except AdminError:
        served = {}
    await update.effective_message.reply_text(format_stats(numbers, served.get("served"), served.get("cost")))
    picture = await asyncio.to_thread(chart, numbers)  # matplotlib takes a while: not on the event loop
    if picture:
        await update.effective_message.reply_photo(InputFile(io.BytesIO(picture), filename="stats.png"), caption="answers per day")


async def export(update: Update, context: Context) -> None:
    """The training data (what /retrain would use), and the handoffs' records with their ratings, as JSONL documents."""
    kefu, message = context.kefu, update.effective_message
    conversations = await build_training_set(kefu.log, kefu.faq, kefu.settings.model_history)
    await _send_jsonl(message, conversations, "kefu-training.jsonl", f"{len(conversations)} conversations")
    records = await kefu.handoffs.records(0)
    rated = sum("rating" in r for r in records)
    await _send_jsonl(message, records, "kefu-handoffs.jsonl", f"{len(records)} handoffs, {rated} rated")


async def _send_jsonl(message: Message, rows: list[dict], filename: str, caption: str) -> None:
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    await message.reply_document(InputFile(io.BytesIO(body), filename=filename), caption=caption)


async def why(update: Update, context: Context) -> None:
    """As a reply to a bot answer: where it came from, and the FAQ entries that competed."""
    kefu, message = context.kefu, update.effective_message
    target = message.reply_to_message
    found = await kefu.log.entry_for_message(message.chat_id, target.message_id) if isinstance(target, Message) else None
    if found is None:
        await message.reply_text("Reply with /why to one of my answers (from the last days) to see where it came from.")
        return
    entry_id, entry = found
    lines = [f"Question: {clip(entry['question'], QUOTE_CHARS)}", f"Source: {entry['source']}"]
    if entry["source"] == "faq":
        lines.append(f"FAQ score: {_num(entry['score'])}")
    elif entry["source"] in ("model", "fallback"):
        lines.append(f"Model {entry['version'] or '—'}, confidence {_num(entry['score'])} "
                     f"(needs {kefu.settings.min_confidence})")
    lines.append(f"Answered in {entry['latency_ms']} ms · log entry {entry_id}")
    candidates = await kefu.faq.match(entry["question"], k=3)
    listed = [f"  {m.score:.2f} #{m.entry.id} {clip(m.matched, QUOTE_CHARS)}"
              + ("" if m.semantic is None else f" (BM25 {m.lexical:.2f}, cosine {m.semantic:.2f}, to the answer {m.answer_cosine:.2f},"
                                                f" words the FAQ lacks {m.unknown:.2f}, by {m.encoder})")
              for m in candidates]
    lines += ["FAQ candidates:", *listed] if listed else ["No FAQ candidates."]
    await message.reply_text("\n".join(lines))


def _num(value: object) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "—"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
