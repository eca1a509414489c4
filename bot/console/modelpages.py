"""Model versions, for admins, through llmcore's admin API (the client /models, /promote and /retrain use).

    GET  /models                       versions with metrics (← current), the latest training job
    GET  /models/{version}/loss.png    a version's loss curve
    GET  /models/compare?a=V&b=W       two versions' answers to the same held-out turns, side by side
    POST /models/promote               version=V
    POST /models/rollback
    POST /models/retrain               arch, minutes: a job over the training set, as /retrain starts it
    GET  /models/events                the job's progress as server-sent events, until it ends
    POST /models/jobs/{id}/{promote|discard}
"""
from __future__ import annotations

import asyncio
import json

from aiohttp import web

from bot.admin import VERSION, RetrainRefused, job_text, start_retrain
from bot.console.base import admin, console, form, page, see_other, session
from bot.llm import AdminError

EVENTS_EVERY_S = 1.0
COMPARED_TURNS = 20
ARCHS = ("transformer", "lstm")
JOB_ID = r"[A-Za-z0-9_-]{1,64}"


routes = web.RouteTableDef()


@routes.get("/models")
@admin
async def models(request: web.Request) -> web.Response:
    kefu = console(request).kefu
    try:
        listing, job = await kefu.admin.versions(), await kefu.admin.job()
    except AdminError as exc:
        listing, job, problem = {"versions": [], "current": None}, None, str(exc)
    else:
        problem = request.query.get("error", "")
    return page(request, "models.html", versions=listing["versions"][::-1], current=listing.get("current"), job=job,
                job_text=job_text(job) if job else "", archs=ARCHS, default_minutes=kefu.settings.retrain_minutes,
                problem=problem, done=request.query.get("done", ""))


@routes.get("/models/{version:v[0-9]{4,}}/loss.png")
@admin
async def loss_curve(request: web.Request) -> web.Response:
    try:
        png = await console(request).kefu.admin.loss_curve(request.match_info["version"])
    except AdminError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=png, content_type="image/png")


@routes.get("/models/compare")
@admin
async def compare(request: web.Request) -> web.Response:
    a, b = request.query.get("a", ""), request.query.get("b", "")
    if not (VERSION.fullmatch(a) and VERSION.fullmatch(b)):
        return see_other("/models?error=version")
    try:
        result = await console(request).kefu.admin.compare(a, b, COMPARED_TURNS)
    except AdminError as exc:
        return page(request, "models_error.html", status=409, problem=str(exc))
    return page(request, "compare.html", result=result, a=a, b=b)


@routes.post("/models/promote")
@admin
async def promote(request: web.Request) -> web.StreamResponse:
    version = (await form(request)).get("version", "")
    if not VERSION.fullmatch(version):
        return see_other("/models?error=version")
    return await _act(request, "model.promote", version, lambda admin_api: admin_api.promote(version))


@routes.post("/models/rollback")
@admin
async def rollback(request: web.Request) -> web.StreamResponse:
    return await _act(request, "model.rollback", "", lambda admin_api: admin_api.rollback())


@routes.post(f"/models/jobs/{{job_id:{JOB_ID}}}/{{decision:promote|discard}}")
@admin
async def decide(request: web.Request) -> web.StreamResponse:
    job_id, decision = request.match_info["job_id"], request.match_info["decision"]
    return await _act(request, f"job.{decision}", job_id, lambda admin_api: admin_api.decide(job_id, decision))


@routes.post("/models/retrain")
@admin
async def retrain(request: web.Request) -> web.StreamResponse:
    c, fields = console(request), await form(request)
    arch = fields.get("arch") if fields.get("arch") in ARCHS else "transformer"
    try:
        minutes = float(fields.get("minutes") or c.settings.retrain_minutes)
    except ValueError:
        return see_other("/models?error=minutes")
    if not 0 < minutes <= 120:
        return see_other("/models?error=minutes")
    try:
        job = await start_retrain(c.kefu, arch, minutes)
    except (RetrainRefused, AdminError) as exc:
        return page(request, "models_error.html", status=409, problem=str(exc))
    await c.audit.record(session(request).person, "model.retrain", job["id"], f"{arch}, {minutes:g} min")
    return see_other("/models?done=retrain")


@routes.get("/models/events")
@admin
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the training job every second while it runs, then once more, and the stream ends."""
    admin_api = console(request).kefu.admin
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    while True:
        try:
            job = await admin_api.job()
        except AdminError as exc:
            job = {"id": "", "status": "unknown", "error": str(exc)}
        await response.write(f"data: {json.dumps(_progress(job), ensure_ascii=False)}\n\n".encode())
        if job is None or job["status"] != "running":
            return response
        await asyncio.sleep(EVENTS_EVERY_S)


def _progress(job: dict | None) -> dict:
    if job is None:
        return {"status": "none", "text": "", "progress": 0}
    progress = job.get("progress") or {}
    text = job_text(job) if job.get("status") != "unknown" else job.get("error", "")
    return {"status": job["status"], "text": text, "progress": float(progress.get("progress") or 0)}


async def _act(request: web.Request, action: str, target: str, call) -> web.StreamResponse:
    c = console(request)
    try:
        result = await call(c.kefu.admin)
    except AdminError as exc:
        return page(request, "models_error.html", status=409, problem=str(exc))
    await c.audit.record(session(request).person, action, target, f"now serving {result.get('current', '?')}")
    return see_other("/models?done=" + action.split(".")[1])
