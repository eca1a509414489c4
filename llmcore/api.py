"""The OpenAI-compatible wire format: request validation and response bodies.

Kefu's own fields live under "kefu" in responses: the answer's `confidence` (mean token
log-probability; 0 is certain), `p_correct` (the version's calibrated probability that the answer is
right, or null for a version without a gate), the `evidence` its prompt held (retrieved stored answers
and the request's own), the `model_version` that produced it, and for an answer chosen among candidates
(llmcore/selection.py) `chosen`: its `source` (greedy, sample, variant, evidence or retrieved) and `consensus`. A request may
bring `evidence` of its own (up to 4 texts, e.g. FAQ answers): it goes into the prompt before the version's own, and
where the answer is chosen among candidates it is one of them, its vote the greedy answer's.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_BODY_BYTES = 1 << 20
MAX_MESSAGES = 512
MAX_MESSAGE_CHARS = 32_768
MAX_STOP_SEQUENCES = 4
MAX_EVIDENCE = 4
MODEL_ALIASES = ("kefu",)
BODY_TIMEOUT_S = 10.0  # a request body (1 MB at most: 100 kB/s) must arrive in this; one sent in part, then stalled,
# held a connection and its buffer for good (slowloris: the request timeout covers only generation)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=2.0)  # 1e-300 made a seen token's logit infinite
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    logprobs: bool = False
    ignore_eos: bool = False  # as in vLLM: generate exactly max_tokens (for benchmarks)
    n: int = Field(default=1, ge=1, le=1)
    evidence: list[str] = Field(default_factory=list, max_length=MAX_EVIDENCE)  # Kefu: the caller's own evidence, e.g. FAQ answers

    @field_validator("evidence")
    @classmethod
    def _evidence_texts(cls, value: list[str]) -> list[str]:
        if any(len(text) > MAX_MESSAGE_CHARS for text in value):
            raise ValueError(f"each evidence text takes at most {MAX_MESSAGE_CHARS} characters")
        for text in value:  # as for messages (and training data, llmcore/chats.py): it is sent back, UTF-8 cannot hold it
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("evidence must be valid Unicode text (a lone surrogate is not)") from None
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings")
        return stops

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_chat_request(data: object) -> ChatRequest:
    if not isinstance(data, dict):
        raise ApiError(400, 'the body must be a JSON object with a "messages" list', param="messages")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def logprobs_body(tokens: list[str], logprobs: list[float]) -> dict:
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                        for t, lp in zip(tokens, logprobs)]}


def completion_body(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                    kefu: dict, logprobs: dict | None) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "kefu": kefu,
    }


def chunk_body(cid: str, model: str, delta: dict, finish_reason: str | None = None, extra: dict | None = None) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if extra:
        body.update(extra)
    return body


async def read_json(request: web.Request) -> object:
    """The request body as JSON; ApiError 413 over MAX_BODY_BYTES, 408 when it takes over BODY_TIMEOUT_S to arrive,
    400 when it is not JSON."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    async with body_deadline(BODY_TIMEOUT_S):
        raw = await request.read()
    return parse_json(raw)


@contextlib.asynccontextmanager
async def body_deadline(seconds: float) -> AsyncIterator[None]:
    """Reading a request body inside: ApiError 408 when it has not all arrived within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise ApiError(408, f"request body not received within {seconds:g} s", code="body_timeout") from None


def parse_json(raw: bytes) -> object:
    """A request body as JSON; ApiError 400 when it is not (the admin API's training bodies too)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not JSON or not UTF-8; an integer too long to read; nested too deep
        raise ApiError(400, f"body is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
