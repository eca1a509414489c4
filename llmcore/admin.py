"""The admin API of the inference service, behind `Authorization: Bearer $LLMCORE_ADMIN_TOKEN`
(compared in constant time; no token configured: every admin route answers 403, a wrong one 401).

    GET  /admin/versions                      every version with its metrics; current and served; what an answer costs
    POST /admin/promote {"version": V}        move `current` and hot-reload
    POST /admin/rollback                      promote the previous current
    POST /admin/reload                        load whatever `current` names now
    GET  /admin/versions/{V}/loss.png         the version's loss curve
    POST /admin/train {"conversations": [...], "arch", "minutes" | "epochs", "request_id"?}   start a job (409 while one runs)
    GET  /admin/train                         the latest job, with its progress
    POST /admin/train/cancel                  stop the running trainer
    POST /admin/jobs/{id}/promote | discard   the decision on a job whose version was not promoted automatically
    POST /admin/compare {"a": V, "b": W, "turns": 20}   both versions' answers to the same held-out turns (one at a time)
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from aiohttp import web

from llmcore.api import ApiError, body_deadline, parse_json, read_json
from llmcore.jobs import JobBusy, JobError, JobManager
from llmcore.registry import LOSS_PLOT, RegistryError
from llmcore.settings import ServeSettings
from llmcore.sidebyside import compare_versions
from llmcore.worker import Worker

MAX_TRAINING_BYTES = 64 << 20  # a training set travels in one request
TRAINING_BODY_TIMEOUT_S = 300.0  # time for it to arrive: 64 MB at ~2 Mbit/s
T = TypeVar("T")


class AdminApi:
    def __init__(self, settings: ServeSettings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.jobs = JobManager(worker.registry, on_promote=worker.promote, promote_margin=settings.promote_margin)
        self.deciding = asyncio.Lock()
        self.comparing = threading.Lock()  # released by the comparison's thread when it ends (_then_release)

    def register(self, app: web.Application) -> None:
        routes = [("GET", "/admin/versions", self.versions), ("POST", "/admin/promote", self.promote),
                  ("POST", "/admin/rollback", self.rollback), ("POST", "/admin/reload", self.reload),
                  ("GET", "/admin/versions/{version}/loss.png", self.loss_curve), ("POST", "/admin/train", self.train),
                  ("GET", "/admin/train", self.job), ("POST", "/admin/train/cancel", self.cancel),
                  ("POST", "/admin/jobs/{job_id}/{decision:promote|discard}", self.decide),
                  ("POST", "/admin/compare", self.compare)]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._guarded(handler))
        app.cleanup_ctx.append(self._watch_jobs)

    def _guarded(self, handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
            token = self.settings.admin_token
            if not token:
                raise ApiError(403, "admin API disabled: set LLMCORE_ADMIN_TOKEN", type_="permission_error")
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")  # bytes not UTF-8: 401, no 500
            if not hmac.compare_digest(given, f"Bearer {token}".encode()):
                raise ApiError(401, "missing or wrong admin token", type_="authentication_error")
            return await handler(request)
        return guarded

    async def _watch_jobs(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.jobs.watch(), name="training-jobs")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def versions(self, request: web.Request) -> web.Response:
        """Every version with its metrics, and which one is current and served."""
        registry = self.worker.registry
        versions = []
        for version in registry.versions():
            try:
                metrics = registry.metrics(version)
            except RegistryError:
                metrics = {}
            versions.append({"version": version, "metrics": metrics})
        return web.json_response({"current": registry.current(), "served": self.worker.version, "versions": versions,
                                  "cost": self.worker.metrics.cost()})

    async def promote(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str):
            raise ApiError(400, 'expected {"version": "v0003"}', param="version")
        return web.json_response(await self._promote(version))

    async def rollback(self, request: web.Request) -> web.Response:
        try:
            version = self.worker.registry.rollback_target()
        except RegistryError as exc:
            raise ApiError(409, str(exc)) from None
        return web.json_response(await self._promote(version, rollback=True))

    async def reload(self, request: web.Request) -> web.Response:
        try:
            served = await self.worker.reload()
        except RegistryError as exc:
            raise ApiError(409, str(exc)) from None
        return web.json_response({"served": served})

    async def loss_curve(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        if version not in self.worker.registry.versions():
            raise ApiError(404, f"no version {version!r}", param="version")
        path = self.worker.registry.path(version) / LOSS_PLOT
        if not path.is_file():
            raise ApiError(404, f"version {version} has no loss curve")
        return web.FileResponse(path, headers={"Content-Type": "image/png"})

    async def train(self, request: web.Request) -> web.Response:
        body = await _read_large_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("conversations"), list):
            raise ApiError(400, 'expected {"conversations": [...], "arch": ..., "minutes": ...}', param="conversations")
        try:  # its data written off the loop; one start at a time (JobManager.start)
            job = await asyncio.to_thread(self.jobs.start, body["conversations"], arch=body.get("arch", "transformer"),
                                          minutes=body.get("minutes"), epochs=body.get("epochs"), model_overrides=body.get("model"),
                                          request_id=body.get("request_id"))
        except JobBusy as exc:
            raise ApiError(409, str(exc), code="job_running") from None
        except (JobError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        return web.json_response(job, status=202)

    async def job(self, request: web.Request) -> web.Response:
        job = self.jobs.status()
        if job is None:
            raise ApiError(404, "no training job yet")
        return web.json_response(job)

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.cancel()
        if job is None:
            raise ApiError(409, "no job is running")
        return web.json_response(job)

    async def decide(self, request: web.Request) -> web.Response:
        job_id, decision = request.match_info["job_id"], request.match_info["decision"]
        async with self.deciding:  # a promote and a discard pressed together: the second finds the job decided
            try:
                job = self.jobs.status(job_id)
                if job is None or job["status"] != "awaiting_decision":
                    raise JobError(f"job {job_id} is not awaiting a decision")
                if decision == "discard":
                    return web.json_response(self.jobs.mark(job_id, "discarded"))
                result = await self._promote(job["version"])
                self.jobs.mark(job_id, "promoted")
            except JobError as exc:
                raise ApiError(409, str(exc)) from None
        return web.json_response({**self.jobs.status(job_id), **result})

    async def compare(self, request: web.Request) -> web.Response:
        """Two versions side by side (llmcore.sidebyside), in a thread: seconds of CPU, one comparison at a time."""
        body = await read_json(request)
        a, b, turns = (body.get(k) for k in ("a", "b", "turns")) if isinstance(body, dict) else (None, None, None)
        if not isinstance(a, str) or not isinstance(b, str) or not isinstance(turns, int | None) or isinstance(turns, bool):
            raise ApiError(400, 'expected {"a": "v0003", "b": "v0004", "turns": 20}')
        if not self.comparing.acquire(blocking=False):
            raise ApiError(409, "a comparison is running; try again when it ends", code="busy")
        try:
            result = await asyncio.to_thread(_then_release, self.comparing, compare_versions, self.worker.registry, a, b,
                                             turns or 20, self.worker.device)
        except RegistryError as exc:
            raise ApiError(404 if "no version" in str(exc) else 409, str(exc)) from None
        return web.json_response(result)

    async def _promote(self, version: str, rollback: bool = False) -> dict:
        # A handler cancelled here (its client left) changes nothing: Worker.promote moves nothing until the version is
        # loaded, then swaps it in and moves `current` with no await between (and decide() marks the job right after).
        try:
            served = await self.worker.promote(version, rollback=rollback)
        except RegistryError as exc:
            raise ApiError(404, str(exc), param="version") from None
        return {"current": version, "served": served}


def _then_release(lock: threading.Lock, func: Callable[..., T], *args: object) -> T:
    """`func(*args)`, then release `lock`, both in the worker thread: a handler cancelled meanwhile (its client left)
    does not free the lock while the work still runs."""
    try:
        return func(*args)
    finally:
        lock.release()


async def _read_large_json(request: web.Request) -> object:
    """Like read_json, with room for a training set (the app's own limit is for chat requests)."""
    if request.content_length is not None and request.content_length > MAX_TRAINING_BYTES:
        raise ApiError(413, f"training data over {MAX_TRAINING_BYTES} bytes")
    chunks, size = [], 0
    async with body_deadline(TRAINING_BODY_TIMEOUT_S):
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > MAX_TRAINING_BYTES:
                raise ApiError(413, f"training data over {MAX_TRAINING_BYTES} bytes")
            chunks.append(chunk)
    return await asyncio.to_thread(parse_json, b"".join(chunks))  # 64 MB of JSON: ~a second the streams should not wait
