"""The FAQ, for admins: search, add, edit, delete, and "try a question" (the ranking the bot would see, with scores).

    GET  /faq?q=&try=              entries (those holding q), and the ranking of `try`
    POST /faq/add                  question, answer, similar (one a line)
    GET  /faq/{id}                 the edit form
    POST /faq/{id}                 save
    POST /faq/{id}/delete
    GET  /faq/export.jsonl         the FAQ as chat JSONL (what `python -m bot faq export` writes)
    POST /faq/import               a .jsonl or .csv file, as `python -m bot faq import` and documents sent to the bot read it
    POST /faq/pending/{key}/{decision}   approve or reject a proposed wording or entry, as /faq_pending's buttons do
"""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiohttp import web

from bot.console.base import admin, console, form, page, posted, see_other, session
from bot.faq import DataError, EntryChanged, digest
from bot.search import FaqEntry

MAX_LISTED = 200
MAX_PENDING_LISTED = 50
NUM_TRIED = 5


routes = web.RouteTableDef()


@routes.get("/faq")
@admin
async def faq(request: web.Request) -> web.Response:
    c, query, tried = console(request), request.query.get("q", "").strip(), request.query.get("try", "").strip()
    everything = await c.kefu.faq.entries()
    by_id = {e.id: e for e in everything}
    entries = [e for e in everything if _holds(e, query)]
    ranking = await c.kefu.faq.match(tried[:2000], k=NUM_TRIED) if tried else []
    proposals = (await c.kefu.paraphrases.pending())[:MAX_PENDING_LISTED]
    return page(request, "faq.html", entries=entries[:MAX_LISTED], total=len(entries), q=query, tried=tried, ranking=ranking,
                pending=[(p, by_id.get(p.entry_id)) for p in proposals],
                done=request.query.get("done", ""), error=request.query.get("error", ""))


@routes.post("/faq/pending/{key:[0-9a-f]{1,64}}/{verdict:approve|reject}")
@admin
async def decide(request: web.Request) -> web.StreamResponse:
    """A customer's wording (or an operator's new pair) approved into the FAQ, searched at once; or rejected."""
    c, key, decision = console(request), request.match_info["key"], request.match_info["verdict"]
    learned = c.kefu.paraphrases
    proposal = await (learned.approve(key) if decision == "approve" else learned.reject(key))
    if proposal is None:
        return see_other("/faq?error=decided")
    await c.audit.record(session(request).person, f"faq.{decision}", f"#{proposal.entry_id}" if proposal.entry_id else "",
                         proposal.wording)
    return see_other(f"/faq?done={decision}")


@routes.post("/faq/add")
@admin
async def add(request: web.Request) -> web.StreamResponse:
    c, fields = console(request), await form(request)
    try:
        entry_id = await c.kefu.faq.add(fields.get("question", ""), fields.get("answer", ""), _lines(fields.get("similar", "")))
    except ValueError:
        return see_other("/faq?error=empty")
    await c.audit.record(session(request).person, "faq.add", f"#{entry_id}", fields.get("question", ""))
    return see_other(f"/faq?done=add&q={entry_id}")


@routes.get("/faq/{id:[0-9]+}")
@admin
async def edit_form(request: web.Request) -> web.Response:
    entry = await console(request).kefu.faq.get(request.match_info["id"])
    if entry is None:
        raise web.HTTPNotFound(text="no such FAQ entry")
    return page(request, "faq_edit.html", entry=entry, digest=digest(entry), error=request.query.get("error", ""))


@routes.post("/faq/{id:[0-9]+}")
@admin
async def edit(request: web.Request) -> web.StreamResponse:
    c, fields, entry_id = console(request), await form(request), request.match_info["id"]
    try:
        changed = await c.kefu.faq.update(entry_id, fields.get("question", ""), fields.get("answer", ""), _lines(fields.get("similar", "")),
                                          expected=fields.get("digest") or None)
    except ValueError:
        return see_other(f"/faq/{entry_id}?error=empty")
    except EntryChanged:  # a wording approved (or another admin's edit) since the form was read: read it again
        return see_other(f"/faq/{entry_id}?error=changed")
    if not changed:
        raise web.HTTPNotFound(text="no such FAQ entry")
    await c.audit.record(session(request).person, "faq.edit", f"#{entry_id}", fields.get("question", ""))
    return see_other("/faq?done=edit")


@routes.post("/faq/{id:[0-9]+}/delete")
@admin
async def delete(request: web.Request) -> web.StreamResponse:
    c, entry_id = console(request), request.match_info["id"]
    if await c.kefu.faq.delete(entry_id):
        await c.audit.record(session(request).person, "faq.delete", f"#{entry_id}")
    return see_other("/faq?done=delete")


@routes.get("/faq/export.jsonl")
@admin
async def export(request: web.Request) -> web.Response:
    lines = await console(request).kefu.faq.export_lines()
    return web.Response(text="".join(line + "\n" for line in lines), content_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="kefu-faq.jsonl"'})


@routes.post("/faq/import")
@admin
async def import_file(request: web.Request) -> web.Response:
    """Every entry of the file, or none: a bad line is named and nothing is imported."""
    c, upload = console(request), (await posted(request)).get("file")
    # a name in bytes that are not UTF-8 arrives with surrogates, which neither the page nor Redis can encode
    name = (getattr(upload, "filename", "") or "").encode(errors="replace").decode()
    suffix = Path(name).suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        return page(request, "faq_import.html", status=400, count=0, problem="a .jsonl or .csv file")
    data = upload.file.read()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"faq{suffix}"
        await asyncio.to_thread(path.write_bytes, data)
        try:
            count = await c.kefu.faq.import_file(path)  # parsed and indexed in a thread
        except DataError as exc:
            return page(request, "faq_import.html", status=400, count=0, problem=str(exc).replace(str(path), name))
    await c.audit.record(session(request).person, "faq.import", name, f"{count} entries")
    return page(request, "faq_import.html", count=count, problem="")


def _holds(entry: FaqEntry, query: str) -> bool:
    if not query:
        return True
    needle = query.casefold()
    return query == entry.id or any(needle in text.casefold() for text in (entry.question, entry.answer, *entry.similar))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
