"""The inference service: OpenAI-compatible chat completions over the continuous-batching engine.

    python -m llmcore serve --models DIR [--host 127.0.0.1] [--port 8700] [--max-batch N] [--max-queue N]

Routes: POST /v1/chat/completions (plain or streamed as server-sent events), GET /v1/models,
GET /healthz, GET /metrics (Prometheus); the admin routes (versions, promotion, training jobs) are in
llmcore/admin.py.

Each prompt is built as the version was trained (llmcore/prompting.py): its stored answers nearest the
question (and any `evidence` the request brings) go in as evidence, with the recipe's number of earlier
turns. A greedy request (temperature 0, without logprobs, stop or ignore_eos) to a version that chooses its
answer (select.json, llmcore/selection.py) gets the candidate that agrees most with the others: its greedy
answer, the nearest stored answers and any seeded samples the version asks for (generated together through the
same worker), sent whole. A history longer than the model's context loses its oldest turns, then evidence, then the
end of a long system message; if the newest message alone is too long, only its end is kept. Never an error.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from llmcore.admin import AdminApi
from llmcore.api import (
    MAX_BODY_BYTES,
    MODEL_ALIASES,
    ApiError,
    ChatRequest,
    chunk_body,
    completion_body,
    completion_id,
    logprobs_body,
    parse_chat_request,
    read_json,
)
from llmcore.engine import EngineError, QueueFull
from llmcore.gate import answer_features
from llmcore.prompting import build_prompt, prompt_ids
from llmcore.registry import LoadedModel
from llmcore.retrieval import Hit
from llmcore.sampling import SamplingParams
from llmcore.selection import Choice
from llmcore.settings import ServeSettings
from llmcore.worker import Served, Submission, Worker

logger = logging.getLogger(__name__)

WORKER = web.AppKey("worker", Worker)
SETTINGS = web.AppKey("settings", ServeSettings)
RETRY_AFTER_S = 1
# How `llmcore serve` runs the app (web.run_app, or web.AppRunner in tests): a client that hangs up cancels its handler,
# which cancels its sequences. aiohttp's default (False) leaves the handler running, and the engine generated for nobody.
RUNNER_OPTIONS = {"handler_cancellation": True}


@dataclass
class Piece:
    """Text produced by one step of a request, after stop sequences were applied."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str | None = None


def create_app(settings: ServeSettings, worker: Worker) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[WORKER] = worker
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_worker_lifecycle)
    AdminApi(settings, worker).register(app)
    return app


async def _worker_lifecycle(app: web.Application) -> AsyncIterator[None]:
    worker = app[WORKER]
    if not worker.ready:
        await worker.start()
    yield
    await worker.stop()


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error leaves as an OpenAI-style JSON body; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(exc.status, exc.reason if exc.status != 413 else f"request body over {MAX_BODY_BYTES} bytes",
                         type_="invalid_request_error" if exc.status < 500 else "server_error")
        return web.json_response(error.body(), status=exc.status)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(ApiError(500, "internal error", type_="server_error").body(), status=500)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    worker = request.app[WORKER]
    body = await read_json(request)
    req = parse_chat_request(body)
    served = worker.served
    if served is None:
        raise ApiError(503, "no model loaded yet", type_="server_error", headers={"Retry-After": str(RETRY_AFTER_S)})
    if req.model and req.model not in (*MODEL_ALIASES, served.version):
        raise ApiError(404, f"model {req.model!r} does not exist", param="model", code="model_not_found")
    block = served.loaded.model.config.block_size
    limit = request.app[SETTINGS].max_tokens_limit(block)
    max_tokens = req.requested_tokens or min(request.app[SETTINGS].default_max_tokens, limit)
    if max_tokens > limit:
        raise ApiError(400, f"max_tokens must be at most {limit}", param="max_tokens")
    loaded = served.loaded
    chooses = (request.app[SETTINGS].select and loaded.selection.enabled and req.temperature == 0
               and not (req.logprobs or req.ignore_eos or req.stop))
    messages = [m.model_dump() for m in req.messages]
    prompt, hits, retrieved, variants = await asyncio.to_thread(  # tokenizing and retrieval off the event loop: streams flow
        _prepare, loaded, messages, block - max_tokens, req.evidence, chooses)
    params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                            repetition_penalty=req.repetition_penalty, max_new_tokens=max_tokens, seed=req.seed)
    candidates = loaded.selection.candidate_params(params) if chooses else [params]
    try:
        submissions = [worker.submit(prompt, candidates[0], ignore_stop=req.ignore_eos, served=served)]
    except QueueFull as exc:
        worker.metrics.request_done("rejected")
        raise ApiError(503, str(exc), type_="server_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except EngineError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    if chooses:
        more = _submit_more(worker, served, [(prompt, p) for p in candidates[1:]] + [(v, params) for v in variants])
        submissions += more[: len(candidates) - 1]
        return await _chosen(request, req, submissions, more[len(candidates) - 1 :], len(prompt), hits, retrieved)
    if req.stream:
        return await _stream(request, req, submissions[0], len(prompt), hits)
    return await _complete(request, req, submissions[0], len(prompt), hits)


def _prepare(loaded: LoadedModel, messages: list[dict], max_tokens: int, extra_evidence: list[str],
             chooses: bool) -> tuple[list[int], list[Hit], list[Hit], list[list[int]]]:
    """The prompt, its evidence, and for a request that chooses its answer the stored answers that join the
    candidates and the variants' prompts (each with the next stored answers as evidence): one search of the version's
    index serves them all (the evidence is among its first hits)."""
    selection, recipe = loaded.selection, loaded.recipe
    retrieved = selection.retrieve(loaded.index, messages, recipe.evidence_k) if chooses else []
    prompt, hits = build_prompt(loaded.tokenizer, loaded.index, recipe, messages, max_tokens,
                                extra_evidence=extra_evidence, searched=retrieved if chooses else None)
    variants = [prompt_ids(loaded.tokenizer, recipe, messages, max_tokens, evidence)
                for evidence in selection.variant_evidence(recipe, extra_evidence, retrieved)] if chooses else []
    return prompt, hits, retrieved, variants


def _submit_more(worker: Worker, served: Served, candidates: list[tuple[list[int], SamplingParams]]) -> list[Submission]:
    """The candidates beside the greedy one (prompt, parameters): the draws, then the variants, as many as the worker
    has spare slots (the batch under half full): under load an answer is chosen among fewer candidates rather than
    every answer slowing down for them (or a full queue refusing a customer because of them)."""
    submissions = []
    for prompt, params in candidates[: worker.spare_slots]:
        try:
            submissions.append(worker.submit(prompt, params, served=served))
        except QueueFull:
            break
        except EngineError as exc:  # a candidate the engine refuses is left out; the answer goes on without it
            logger.warning("a candidate was refused: %s", exc)
    return submissions


def _kefu(submission: Submission, text: str, hits: list[Hit], confidence: float | None = None,
          choice: Choice | None = None) -> dict:
    """Kefu's extra answer fields: confidence, calibrated probability of being right, the evidence, the version, and
    for an answer chosen among candidates, where it came from."""
    output, loaded = submission.seq.output, submission.served.loaded
    if choice is None:
        confidence = output.confidence if output.token_ids else None
    p_correct = loaded.gate.probability(answer_features(text, confidence, hits)) if loaded.gate else None
    kefu = {"confidence": confidence, "p_correct": p_correct, "model_version": loaded.version,
            "evidence": [{"text": h.response, "score": round(h.score, 4)} for h in hits]}
    if choice is not None:
        kefu["chosen"] = {"source": choice.source, "consensus": round(choice.consensus, 4)}
    return kefu


async def _chosen(request: web.Request, req: ChatRequest, submissions: list[Submission], variants: list[Submission],
                  prompt_tokens: int, hits: list[Hit], retrieved: list[Hit]) -> web.StreamResponse:
    """A greedy request to a version that chooses its answer: the candidates are generated together (the greedy one
    first), then the one that agrees most with the others and with the nearest stored answers is sent whole, as a
    body or as one streamed piece (llmcore/selection.py)."""
    worker, greedy = request.app[WORKER], submissions[0]
    loaded = greedy.served.loaded
    try:
        async with asyncio.timeout(request.app[SETTINGS].request_timeout_s):
            await asyncio.gather(*(_finished(s) for s in submissions + variants))
    except TimeoutError:
        _cancel_all(worker, submissions + variants, "timeout")
        raise ApiError(503, "the request timed out; try again", type_="server_error", code="timeout",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except asyncio.CancelledError:
        _cancel_all(worker, submissions + variants, "disconnected")
        raise
    if greedy.seq.output.finish_reason == "error":
        _record(worker, greedy, "error")
        raise ApiError(500, f"generation failed: {greedy.seq.error}", type_="server_error")
    outputs = [s.seq.output for s in submissions if s.seq.output.finish_reason != "error"]
    varied = [s.seq.output for s in variants if s.seq.output.finish_reason != "error"]
    choice = loaded.selection.choose(
        [(loaded.tokenizer.decode(o.token_ids), o.confidence if o.token_ids else None) for o in outputs + varied], retrieved,
        req.evidence, variants=len(varied))
    chosen = (outputs + varied)[choice.index] if choice.source in ("greedy", "sample", "variant") else None
    finish = chosen.finish_reason if chosen else "stop"
    tokens = len(chosen.token_ids) if chosen else len(loaded.tokenizer.encode(choice.text))
    kefu = _kefu(greedy, choice.text, hits, choice.confidence, choice)
    _record(worker, greedy, "ok")
    cid, version = completion_id(), greedy.served.version
    if not req.stream:
        return web.json_response(completion_body(cid, version, choice.text, finish, prompt_tokens, tokens, kefu, None))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    await _send(response, chunk_body(cid, version, {"role": "assistant", "content": ""}))
    await _send(response, chunk_body(cid, version, {"content": choice.text}))
    await _send(response, chunk_body(cid, version, {}, finish, {"usage": usage, "kefu": kefu}))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _finished(submission: Submission) -> None:
    async for _ in submission.updates():
        pass


def _cancel_all(worker: Worker, submissions: list[Submission], outcome: str) -> None:
    for submission in submissions:
        worker.cancel(submission)
    _record(worker, submissions[0], outcome)


async def _complete(request: web.Request, req: ChatRequest, submission: Submission, prompt_tokens: int,
                    hits: list[Hit]) -> web.Response:
    worker = request.app[WORKER]
    texts, tokens, logprobs, finish = [], [], [], None
    try:
        async for piece in _pieces(request, req, submission):
            texts.append(piece.text)
            tokens += piece.tokens
            logprobs += piece.logprobs
            finish = piece.finish_reason or finish
    except asyncio.CancelledError:  # the client left: its slot is freed at the next step
        _cancel_all(worker, [submission], "disconnected")
        raise
    tokenizer = submission.served.loaded.tokenizer
    lp = logprobs_body([tokenizer.decode([t]) for t in tokens], logprobs) if req.logprobs else None
    text = "".join(texts)
    body = completion_body(completion_id(), submission.served.version, text, finish, prompt_tokens, len(tokens),
                           _kefu(submission, text, hits), lp)
    _record(worker, submission, "ok")
    return web.json_response(body)


async def _stream(request: web.Request, req: ChatRequest, submission: Submission, prompt_tokens: int,
                  hits: list[Hit]) -> web.StreamResponse:
    worker = request.app[WORKER]
    cid, version = completion_id(), submission.served.version
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    tokenizer = submission.served.loaded.tokenizer
    try:
        await response.prepare(request)  # in the try: a client gone before the headers went out frees its slot too
        await _send(response, chunk_body(cid, version, {"role": "assistant", "content": ""}))
        count, text = 0, ""
        async for piece in _pieces(request, req, submission):
            count += len(piece.tokens)
            text += piece.text
            if piece.text or piece.finish_reason is None:
                chunk = chunk_body(cid, version, {"content": piece.text})
                if req.logprobs:
                    chunk["choices"][0]["logprobs"] = logprobs_body([tokenizer.decode([t]) for t in piece.tokens], piece.logprobs)
                await _send(response, chunk)
            if piece.finish_reason:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count, "total_tokens": prompt_tokens + count}
                kefu = _kefu(submission, text, hits)
                await _send(response, chunk_body(cid, version, {}, piece.finish_reason, {"usage": usage, "kefu": kefu}))
        await response.write(b"data: [DONE]\n\n")
    except ApiError as exc:  # the stream has begun (200 sent): the error goes out as an event, as OpenAI's API does
        await _send(response, exc.body())
        return response
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        worker.cancel(submission)  # the client left: its slot is freed at the next step
        _record(worker, submission, "disconnected")
        if isinstance(exc, asyncio.CancelledError):
            raise
        return response  # nobody to answer: not an error of the server's (the bot gives up on a stream at its deadline)
    _record(worker, submission, "ok")
    return response


async def _pieces(request: web.Request, req: ChatRequest, submission: Submission) -> AsyncIterator[Piece]:
    """The request's text step by step, with stop sequences applied and a timeout on the whole request."""
    worker = request.app[WORKER]
    tokenizer = submission.served.loaded.tokenizer
    stops, holdback = req.stop, max((len(s) for s in req.stop), default=1) - 1
    sent, text = 0, ""
    try:
        async with asyncio.timeout(request.app[SETTINGS].request_timeout_s):
            async for events in submission.updates():
                tokens = [e.token for e in events if e.token is not None]
                logprobs = [e.logprob for e in events if e.logprob is not None]
                if tokens:
                    text += tokenizer.decode(tokens)  # incremental: each token's text is its own
                finish = submission.seq.output.finish_reason if events[-1].finished else None
                if finish == "error":
                    _record(worker, submission, "error")
                    raise ApiError(500, f"generation failed: {submission.seq.error}", type_="server_error")
                cut = min((i for i in (text.find(s, max(sent - len(s), 0)) for s in stops) if i >= 0), default=-1)
                if cut >= 0:  # a stop sequence: cut there, and the request is done
                    worker.cancel(submission)
                    yield Piece(text[sent:cut], tokens, logprobs, "stop")
                    return
                end = len(text) if finish else max(sent, len(text) - holdback)  # hold back a possible stop prefix
                yield Piece(text[sent:end], tokens, logprobs, finish)
                sent = end
                if finish:
                    return
    except TimeoutError:
        worker.cancel(submission)
        _record(worker, submission, "timeout")
        raise ApiError(503, "the request timed out; try again", type_="server_error", code="timeout",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None


def _record(worker: Worker, submission: Submission, outcome: str) -> None:
    seq = submission.seq
    n = len(seq.output.token_ids)
    ttft = seq.first_token_at - seq.arrived if seq.first_token_at else None
    tpot = (time.monotonic() - seq.first_token_at) / (n - 1) if seq.first_token_at and n > 1 else None
    worker.metrics.request_done(outcome, ttft, tpot)


async def _send(response: web.StreamResponse, body: dict) -> None:
    await response.write(b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n")


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the served version (also answers to the alias "kefu")."""
    worker = request.app[WORKER]
    data = [{"id": worker.version, "object": "model", "created": 0, "owned_by": "kefu"}] if worker.version else []
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: version, device, queue depth, readiness."""
    worker = request.app[WORKER]
    body = {"ready": worker.ready, "version": worker.version, "device": str(worker.device),
            "queue_depth": worker.queue_depth, "active": worker.active}
    return web.json_response(body, status=200 if worker.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    return web.Response(body=request.app[WORKER].metrics.render(), content_type="text/plain", charset="utf-8")


