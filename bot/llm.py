"""The bot's client of llmcore's OpenAI-compatible API: one aiohttp session, a deadline on every answer,
retries on 503 that honour Retry-After, and a circuit breaker so a dead service costs nothing.

    llm = LlmClient("http://127.0.0.1:8700", timeout_s=20)
    await llm.start()
    answer = await llm.answer(messages, max_tokens=96)                   # ModelAnswer(text, confidence, version)
    answer = await llm.answer(messages, max_tokens=96, on_text=show)     # streamed: show(text so far) as it grows
    answer = await llm.answer(messages, 96, evidence=["a FAQ answer"])    # evidence for the model to draw on
    await llm.close()

Any failure (unreachable, 5xx, too slow, breaker open) raises LlmUnavailable within the deadline: the
caller answers with its fallback.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)
MAX_RETRY_AFTER_S = 5.0


class LlmUnavailable(Exception):
    """llmcore gave no usable answer in time."""


@dataclass(frozen=True)
class ModelAnswer:
    text: str
    confidence: float | None  # mean token log-probability; None for an empty answer
    version: str | None
    finish_reason: str | None
    p_correct: float | None = None  # the version's calibrated probability that the answer is right (None: no gate)


class CircuitBreaker:
    """Open after `threshold` failures in a row. While open, one trial call goes through after `probe_s` (half-open):
    a success closes the breaker, a failure opens it again for twice as long (at most `max_probe_s`). A service
    that comes back is used again within about a second, one that stays down costs one request per interval."""

    def __init__(self, threshold: int = 5, probe_s: float = 1.0, max_probe_s: float = 30.0) -> None:
        self.threshold = threshold
        self.probe_s, self.max_probe_s = probe_s, max_probe_s
        self.failures = 0
        self.opened_at: float | None = None
        self.wait_s = probe_s
        self.probe_since: float | None = None  # a trial call is out

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        """May a call go out now? While open, True once per interval: that call is the trial."""
        if self.opened_at is None:
            return True
        now = time.monotonic()
        if self.probe_since is not None and now - self.probe_since < self.max_probe_s:
            return False  # one trial at a time (one lost without a verdict frees the slot after max_probe_s)
        if now - self.opened_at >= self.wait_s:
            self.probe_since = now
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.probe_since, self.wait_s = 0, None, None, self.probe_s

    def failure(self) -> None:
        self.failures += 1
        if self.probe_since is not None:  # the trial failed: open again, for longer
            self.opened_at, self.probe_since = time.monotonic(), None
            self.wait_s = min(self.wait_s * 2, self.max_probe_s)
        elif self.opened_at is None and self.failures >= self.threshold:
            self.opened_at, self.wait_s = time.monotonic(), self.probe_s


class _Retry(Exception):
    def __init__(self, reason: str, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.after_s = after_s


class LlmClient:
    def __init__(self, base_url: str, timeout_s: float, breaker: CircuitBreaker | None = None) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def answer(self, messages: list[dict[str, str]], max_tokens: int,
                     on_text: Callable[[str], Awaitable[None]] | None = None, repetition_penalty: float = 1.0,
                     evidence: list[str] | None = None) -> ModelAnswer:
        if not self.breaker.allow():
            raise LlmUnavailable("circuit open: llmcore failed repeatedly")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self._with_retries(messages, max_tokens, on_text, repetition_penalty, evidence or [])
        except TimeoutError:
            self.breaker.failure()
            raise LlmUnavailable(f"no answer within {self.timeout_s:g} s") from None
        except LlmUnavailable:
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    async def _with_retries(self, messages: list[dict[str, str]], max_tokens: int,
                            on_text: Callable[[str], Awaitable[None]] | None, repetition_penalty: float,
                            evidence: list[str]) -> ModelAnswer:
        body = {"model": "kefu", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": on_text is not None}
        if repetition_penalty != 1.0:
            body["repetition_penalty"] = repetition_penalty
        if evidence:
            body["evidence"] = evidence
        for attempt in range(4):
            try:
                return await self._request(body, on_text)
            except _Retry as retry:
                if attempt == 3:
                    raise LlmUnavailable(str(retry)) from None
                delay = retry.after_s if retry.after_s is not None else 0.2 * 2**attempt * (1 + random.random())
                logger.info("llmcore: %s; retrying in %.1f s", retry, delay)
                await asyncio.sleep(min(delay, MAX_RETRY_AFTER_S))
        raise AssertionError("unreachable")

    async def _request(self, body: dict, on_text: Callable[[str], Awaitable[None]] | None) -> ModelAnswer:
        if self._session is None:
            raise RuntimeError("LlmClient.start() was not called")
        try:
            async with self._session.post(self.url, json=body) as response:
                if response.status >= 500:  # 503 (queue full, loading) and friends: worth another try
                    raise _Retry(f"HTTP {response.status}", _retry_after(response))
                if response.status != 200:
                    raise LlmUnavailable(f"HTTP {response.status}: {(await response.text())[:200]}")
                if on_text is not None and response.content_type == "text/event-stream":
                    return await _read_stream(response, on_text)
                return await _read_plain(response)  # also when a proxy or an older server answered a stream request plainly
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _Retry(f"{exc.__class__.__name__}: {exc}") from None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:  # not the body the API promises
            raise LlmUnavailable(f"malformed answer from llmcore: {exc}") from None


def _model_answer(text, kefu, finish) -> ModelAnswer:
    """The answer, its fields checked: TypeError for a body of the wrong shape (a number as the text, a string as the
    confidence), which would otherwise fail later, in the pipeline, as "something went wrong"."""
    if not isinstance(kefu, dict):
        raise TypeError(f"kefu is {type(kefu).__name__}, not an object")
    confidence, version, p_correct = kefu.get("confidence"), kefu.get("model_version"), kefu.get("p_correct")
    numbers = [v for v in (confidence, p_correct) if v is not None]
    if not isinstance(text, str) or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in numbers) \
            or not isinstance(version, str | None) or not isinstance(finish, str | None):
        raise TypeError("a field of the answer has the wrong type")
    return ModelAnswer(text, None if confidence is None else float(confidence), version, finish,
                       None if p_correct is None else float(p_correct))


async def _read_plain(response: aiohttp.ClientResponse) -> ModelAnswer:
    body = await response.json()
    choice = body["choices"][0]
    return _model_answer(choice["message"]["content"] or "", body.get("kefu") or {}, choice["finish_reason"])


async def _read_stream(response: aiohttp.ClientResponse, on_text: Callable[[str], Awaitable[None]]) -> ModelAnswer:
    text, finish, kefu = "", None, {}
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise _Retry(f"error mid-stream: {chunk['error'].get('message')}")
        delta = chunk["choices"][0]["delta"].get("content") or ""
        finish = chunk["choices"][0].get("finish_reason") or finish
        kefu = chunk.get("kefu") or kefu
        if delta:
            text += delta
            await on_text(text)
    if finish is None:
        raise _Retry("stream ended before the answer did")
    return _model_answer(text, kefu, finish)


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


class AdminError(Exception):
    """llmcore's admin API refused or could not be reached; the message says why, for the admin."""


class AdminUnreachable(AdminError):
    """No answer came: llmcore may or may not have done what was asked."""


TRAIN_TIMEOUT_S = 300.0  # a training set of up to 60 MiB travels in the request (llmcore gives it as long to arrive)


class LlmAdmin:
    """llmcore's admin API (bearer token): versions, promotion, rollback, training jobs."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def versions(self) -> dict:
        return await self._call("GET", "/admin/versions")

    async def promote(self, version: str) -> dict:
        return await self._call("POST", "/admin/promote", {"version": version})

    async def rollback(self) -> dict:
        return await self._call("POST", "/admin/rollback")

    async def train(self, conversations: list[dict], arch: str, minutes: float, shape: dict[str, int], request_id: str) -> dict:
        """Start a job; `request_id` is kept with it, so that a caller whose answer was lost can tell its job from
        another's (LlmAdmin.job)."""
        return await self._call("POST", "/admin/train", {"conversations": conversations, "arch": arch, "minutes": minutes,
                                                         "request_id": request_id, **({"model": shape} if shape else {})},
                                timeout_s=TRAIN_TIMEOUT_S)

    async def job(self) -> dict | None:
        try:
            return await self._call("GET", "/admin/train")
        except AdminError as exc:
            if "no training job" in str(exc):
                return None
            raise

    async def decide(self, job_id: str, decision: str) -> dict:
        return await self._call("POST", f"/admin/jobs/{job_id}/{decision}")

    async def loss_curve(self, version: str) -> bytes:
        return await self._call("GET", f"/admin/versions/{version}/loss.png", raw=True)

    async def compare(self, a: str, b: str, turns: int) -> dict:
        """Both versions' answers to the same held-out turns (llmcore.sidebyside)."""
        return await self._call("POST", "/admin/compare", {"a": a, "b": b, "turns": turns})

    async def _call(self, method: str, path: str, body: dict | None = None, raw: bool = False, timeout_s: float | None = None):
        if not self.token:
            raise AdminError("LLMCORE_ADMIN_TOKEN is not set for the bot")
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")  # a character as UTF-8:
        try:  # escaped, one outside the BMP took 12 bytes, and a training set 3x its size against llmcore's 64 MB
            timeout = self.timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.request(method, self.base + path, data=data, headers=headers) as response:
                if response.status >= 400:
                    raise AdminError(f"llmcore {response.status}: {await _error_text(response)}")
                return await response.read() if raw else await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnreachable(f"llmcore unreachable: {exc.__class__.__name__} {exc}".strip()) from None


async def _error_text(response: aiohttp.ClientResponse) -> str:
    try:
        return (await response.json())["error"]["message"]
    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
        return (await response.text())[:200]
