"""Who may use the console, and how they get in: one-time login links, Telegram Mini App `initData`, sessions,
CSRF tokens and a login rate limit, all in Redis under the bot's prefix.

    auth = ConsoleAuth(redis, prefix="kefu:", bot_token="123:abc", session_s=43200)
    token = await auth.issue_link(Person(42, "Ann", "admin", "zh"))      # /console in Telegram, or `make run`
    person = await auth.redeem_link(token)                              # once; None when reused or older than 5 minutes
    person = await auth.verify_init_data(init_data, role_for)           # the Mini App; None when forged, stale or replayed
    sid, session = await auth.start_session(person)                     # the cookie's value; session.csrf for the forms
    session = await auth.session(sid)                                   # None when unknown or expired
    if not await auth.allow_attempt(request.remote): ...                # LOGIN_ATTEMPTS_PER_MINUTE per address

Secrets are never stored as they are: Redis holds SHA-256 digests of link tokens and session ids, so a copy of the
database does not log anyone in.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl

from redis.asyncio import Redis

from bot.settings import BotSettings

LINK_TTL_S = 300  # a login link works once, within 5 minutes
INIT_DATA_MAX_AGE_S = 300  # a Mini App's initData older than this is refused (and each is accepted once)
INIT_DATA_FUTURE_S = 30  # clock skew allowed for an auth_date ahead of ours
MAX_INIT_DATA_CHARS = 4096
LOGIN_ATTEMPTS_PER_MINUTE = 10
ROLES = ("admin", "operator")
LOCAL_ADMIN_ID = 0  # `make run` without Telegram: the person at the terminal
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}")  # as secrets.token_urlsafe makes links, session ids and CSRF tokens


@dataclass(frozen=True)
class Person:
    user_id: int
    name: str
    role: str  # one of ROLES
    lang: str = "zh"


@dataclass(frozen=True)
class Session:
    person: Person
    csrf: str
    expires: float


RoleFor = Callable[[int], Awaitable[str | None]]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def init_data_hash(fields: dict[str, str], bot_token: str) -> str:
    """Telegram's signature of Mini App data: HMAC-SHA256 of the sorted `key=value` lines (all fields but `hash`),
    keyed with HMAC-SHA256("WebAppData", bot token)."""
    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "hash")
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    return hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()


def parse_init_data(init_data: str, bot_token: str, now: float) -> dict[str, str] | None:
    """The fields of `init_data` when Telegram signed them and auth_date is fresh; None otherwise."""
    if not bot_token or len(init_data) > MAX_INIT_DATA_CHARS:
        return None
    fields = dict(parse_qsl(init_data, keep_blank_values=True))
    # as bytes: compare_digest refuses str that is not ASCII, and a forged hash may be any text
    if not hmac.compare_digest(fields.get("hash", "").encode(), init_data_hash(fields, bot_token).encode()):
        return None
    try:
        age = now - int(fields.get("auth_date", ""))
    except ValueError:
        return None
    return fields if -INIT_DATA_FUTURE_S <= age <= INIT_DATA_MAX_AGE_S else None


class ConsoleAuth:
    def __init__(self, redis: Redis, prefix: str, bot_token: str | None, session_s: float) -> None:
        self.redis = redis
        self.prefix = f"{prefix}console:"
        self.bot_token = bot_token or ""
        self.session_s = int(session_s)

    @classmethod
    def from_settings(cls, redis: Redis, settings: BotSettings) -> ConsoleAuth:
        """As the console, `/console` and `bot console --link` all need it: the bot's token checks Mini App data."""
        token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else None
        return cls(redis, settings.redis_prefix, token, settings.console_session_hours * 3600)

    async def issue_link(self, person: Person) -> str:
        """A one-time token for /login/<token>."""
        token = secrets.token_urlsafe(32)
        await self.redis.set(f"{self.prefix}link:{_digest(token)}", json.dumps(asdict(person)), ex=LINK_TTL_S)
        return token

    async def redeem_link(self, token: str) -> Person | None:
        """The person the link was made for; the link is gone after this (GETDEL: two tabs cannot both use it)."""
        if not _is_token(token):
            return None
        raw = await self.redis.getdel(f"{self.prefix}link:{_digest(token)}")
        return Person(**json.loads(raw)) if raw else None

    async def verify_init_data(self, init_data: str, role_for: RoleFor, now: float | None = None) -> Person | None:
        """The Mini App's user when the data is Telegram's, fresh, never seen before, and the user is an admin or an operator."""
        fields = parse_init_data(init_data, self.bot_token, time.time() if now is None else now)
        if fields is None:
            return None
        if not await self.redis.set(f"{self.prefix}initdata:{fields['hash']}", "1", nx=True, ex=INIT_DATA_MAX_AGE_S + INIT_DATA_FUTURE_S):
            return None  # replayed
        try:
            user = json.loads(fields.get("user", ""))
            user_id = int(user["id"])
        except (ValueError, KeyError, TypeError):
            return None
        role = await role_for(user_id)
        if role is None:
            return None
        lang = "en" if str(user.get("language_code") or "zh")[:2] != "zh" else "zh"
        return Person(user_id, str(user.get("first_name") or user_id)[:64], role, lang)

    async def start_session(self, person: Person) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(person, secrets.token_urlsafe(32), time.time() + self.session_s)
        await self.redis.set(self._session_key(sid), json.dumps({"person": asdict(person), "csrf": session.csrf,
                                                                 "expires": session.expires}), ex=self.session_s)
        return sid, session

    async def session(self, sid: str | None) -> Session | None:
        if not _is_token(sid):
            return None
        raw = await self.redis.get(self._session_key(sid))
        if raw is None:
            return None
        data = json.loads(raw)
        return Session(Person(**data["person"]), data["csrf"], data["expires"])

    async def end_session(self, sid: str) -> None:
        await self.redis.delete(self._session_key(sid))

    async def allow_attempt(self, remote: str | None) -> bool:
        """A login attempt from this address: False past LOGIN_ATTEMPTS_PER_MINUTE in the current minute."""
        key = f"{self.prefix}attempts:{remote or 'unknown'}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, 120).execute()
        return count <= LOGIN_ATTEMPTS_PER_MINUTE

    def _session_key(self, sid: str) -> str:
        return f"{self.prefix}session:{_digest(sid)}"


def csrf_ok(session: Session, submitted: object) -> bool:
    return _is_token(submitted) and hmac.compare_digest(session.csrf, submitted)


def _is_token(value: object) -> bool:
    """A token as this module makes them: anything else (a cookie of undecodable bytes, a file) is refused unread."""
    return isinstance(value, str) and TOKEN.fullmatch(value) is not None
