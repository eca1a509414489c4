"""The FAQ's admin commands (admins only: bot/admin.py registers them behind the ADMIN_IDS filter).

    /faq_add question || answer   /faq_del ID   /faq_list
    /faq_pending                  customers' wordings and operators' answers proposed for the FAQ, with ✅ / ❌ buttons
    a .jsonl or .csv document sent to the bot in a private chat: imported into the FAQ
"""
from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import TelegramError

from bot.context import Context
from bot.faq import DataError
from bot.split import clip, split_message

MAX_DOCUMENT_BYTES = 5 << 20
QUOTE_CHARS = 500  # of a customer's wording, an answer or a question quoted in a listing: a few fit in one message (4096)


async def faq_add(update: Update, context: Context) -> None:
    """/faq_add question || answer"""
    parts = (update.effective_message.text or "").split(maxsplit=1)  # "/faq_add\nquestion": a newline ends the command too
    question, sep, answer = (parts[1] if len(parts) > 1 else "").partition("||")
    if not sep or not question.strip() or not answer.strip():
        await update.effective_message.reply_text("Usage: /faq_add question || answer")
        return
    try:
        entry_id = await context.kefu.faq.add(question.strip(), answer.strip())
    except ValueError as exc:
        await update.effective_message.reply_text(f"Not added: {exc}")
        return
    await update.effective_message.reply_text(f"Added FAQ entry {entry_id}.")


MAX_PENDING_SHOWN = 10


async def faq_pending(update: Update, context: Context) -> None:
    """/faq_pending: customers' wordings that led to an entry, and operators' answers the FAQ lacks, to approve or reject."""
    kefu = context.kefu
    proposals = await kefu.paraphrases.pending()
    if not proposals:
        await update.effective_message.reply_text("No proposed wordings or entries.")
        return
    for p in proposals[:MAX_PENDING_SHOWN]:
        if p.is_new_entry:
            text = f"New entry (an operator's answer): “{clip(p.wording, QUOTE_CHARS)}” → {clip(p.answer, QUOTE_CHARS)}"
        else:
            entry = await kefu.faq.get(p.entry_id)
            question = clip(entry.question, QUOTE_CHARS) if entry else "(entry deleted)"
            text = f"“{clip(p.wording, QUOTE_CHARS)}” → #{p.entry_id} {question} ({p.users} customer(s))"
        buttons = InlineKeyboardMarkup([[InlineKeyboardButton("✅ Add", callback_data=f"fp:ok:{p.key}"),
                                         InlineKeyboardButton("❌ Reject", callback_data=f"fp:no:{p.key}")]])
        await update.effective_message.reply_text(text, reply_markup=buttons)
    if len(proposals) > MAX_PENDING_SHOWN:
        await update.effective_message.reply_text(f"… and {len(proposals) - MAX_PENDING_SHOWN} more.")


async def decide_wording(update: Update, context: Context) -> None:
    """✅ / ❌ under a proposed wording: admins only."""
    query, kefu = update.callback_query, context.kefu
    if not await context.admin_pressed(query):
        return
    _, decision, key = query.data.split(":", 2)
    proposal = await (kefu.paraphrases.approve(key) if decision == "ok" else kefu.paraphrases.reject(key))
    await query.answer("Done." if proposal else "Already decided.")
    with contextlib.suppress(TelegramError):
        await query.edit_message_reply_markup(None)
    if proposal:
        verdict = ("rejected" if decision != "ok" else f"new FAQ entry #{proposal.entry_id}" if proposal.is_new_entry
                   else f"added to #{proposal.entry_id}")
        await query.message.reply_text(f"“{proposal.wording}”: {verdict}.")


async def faq_del(update: Update, context: Context) -> None:
    """/faq_del ID"""
    args = context.args or []
    if len(args) != 1 or not args[0].isdigit():
        await update.effective_message.reply_text("Usage: /faq_del ID (see /faq_list)")
        return
    removed = await context.kefu.faq.delete(args[0])
    await update.effective_message.reply_text(f"Removed FAQ entry {args[0]}." if removed else f"No FAQ entry {args[0]}.")


async def faq_list(update: Update, context: Context) -> None:
    """Every entry: id, question, the start of the answer."""
    entries = await context.kefu.faq.entries()
    text = "\n".join(f"{e.id}. {e.question} → {e.answer[:40]}{'…' if len(e.answer) > 40 else ''}" for e in entries)
    for part in split_message(text or "The FAQ is empty."):
        await update.effective_message.reply_text(part)


async def faq_document(update: Update, context: Context) -> None:
    """A .jsonl or .csv document from an admin: imported into the FAQ, or a clear reason why not."""
    document = update.effective_message.document
    suffix = Path(document.file_name or "").suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        await update.effective_message.reply_text("Send the FAQ as .jsonl (two-message conversations) or .csv (question,answer).")
        return
    if (document.file_size or 0) > MAX_DOCUMENT_BYTES:
        await update.effective_message.reply_text(f"That file is over {MAX_DOCUMENT_BYTES >> 20} MB; nothing was imported.")
        return
    data = bytes(await (await document.get_file()).download_as_bytearray())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"faq{suffix}"
        await asyncio.to_thread(path.write_bytes, data[: MAX_DOCUMENT_BYTES + 1])
        try:
            count = await context.kefu.faq.import_file(path)  # parsed and indexed in a thread: other chats go on
        except DataError as exc:
            await update.effective_message.reply_text(f"Nothing was imported: {str(exc).replace(str(path), document.file_name or 'file')}")
            return
    await update.effective_message.reply_text(f"Imported {count} FAQ entries.")
