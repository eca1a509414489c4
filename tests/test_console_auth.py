"""The console's ways in, one by one: Mini App initData (valid, forged, stale, replayed), one-time links (once, and not
after they expire), sessions, the login rate limit and CSRF tokens; against the real Redis."""
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qsl

import pytest

from bot.console.auth import (
    INIT_DATA_MAX_AGE_S,
    LINK_TTL_S,
    LOGIN_ATTEMPTS_PER_MINUTE,
    ConsoleAuth,
    Person,
    Session,
    csrf_ok,
    parse_init_data,
)

from .consolekit import ADMIN, BOT_TOKEN, init_data

USER = {"id": 9001, "first_name": "Ann", "language_code": "en"}


async def admins_only(user_id: int) -> str | None:
    return "admin" if user_id == 9001 else None


@pytest.fixture
def auth(redis, prefix):
    return ConsoleAuth(redis, prefix, BOT_TOKEN, session_s=3600)


def test_the_signature_is_telegrams():
    """Computed here step by step from Telegram's description, apart from the code under test."""
    data = init_data(USER)
    fields = dict(parse_qsl(data))
    check = "\n".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "hash")
    secret = hmac.new(key=b"WebAppData", msg=BOT_TOKEN.encode(), digestmod=hashlib.sha256).digest()
    assert fields["hash"] == hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    assert parse_init_data(data, BOT_TOKEN, time.time())["user"] == json.dumps(USER, separators=(",", ":"))


async def test_valid_init_data_logs_the_admin_in(auth):
    person = await auth.verify_init_data(init_data(USER), admins_only)
    assert person == Person(9001, "Ann", "admin", "en")


@pytest.mark.parametrize("forge", [
    lambda d: d.replace("Ann", "Bob"),                                     # a field changed after signing
    lambda d: d.replace("9001", "9002"),                                   # another user
    lambda d: d[:-4] + ("0000" if not d.endswith("0000") else "1111"),      # the hash itself
    lambda d: "&".join(p for p in d.split("&") if not p.startswith("hash=")),  # no hash
    lambda d: init_data(USER, token="654321:OTHER-BOT"),                   # signed for another bot
    lambda d: d + "&extra=1",                                              # a field added
])
async def test_forged_init_data_is_refused(auth, forge):
    assert await auth.verify_init_data(forge(init_data(USER)), admins_only) is None


async def test_stale_and_future_init_data_are_refused(auth):
    now = time.time()
    assert await auth.verify_init_data(init_data(USER, auth_date=now - INIT_DATA_MAX_AGE_S - 5), admins_only) is None
    assert await auth.verify_init_data(init_data(USER, auth_date=now + 3600), admins_only) is None
    assert await auth.verify_init_data(init_data(USER, auth_date=now - INIT_DATA_MAX_AGE_S + 5), admins_only) is not None


async def test_replayed_init_data_is_refused(auth):
    data = init_data(USER)
    assert await auth.verify_init_data(data, admins_only) is not None
    assert await auth.verify_init_data(data, admins_only) is None


async def test_init_data_of_someone_without_a_role_or_without_a_token_is_refused(redis, prefix, auth):
    assert await auth.verify_init_data(init_data({"id": 4242, "first_name": "Eve"}), admins_only) is None
    assert await auth.verify_init_data(init_data({"first_name": "no id"}), admins_only) is None
    no_token = ConsoleAuth(redis, prefix + "x:", None, 3600)
    assert await no_token.verify_init_data(init_data(USER), admins_only) is None


async def test_a_link_works_once(auth):
    token = await auth.issue_link(ADMIN)
    assert await auth.redeem_link(token) == ADMIN
    assert await auth.redeem_link(token) is None
    assert await auth.redeem_link("made-up") is None and await auth.redeem_link("") is None


async def test_a_link_expires_after_five_minutes_and_is_not_stored_as_is(auth, redis, prefix):
    token = await auth.issue_link(ADMIN)
    keys = [key async for key in redis.scan_iter(f"{prefix}console:link:*")]
    assert len(keys) == 1 and token not in keys[0]  # a copy of Redis logs no one in
    assert 0 < await redis.ttl(keys[0]) <= LINK_TTL_S == 300
    await redis.expire(keys[0], 0)  # Redis's own expiry, now
    assert await auth.redeem_link(token) is None


async def test_sessions_expire_and_end(auth, redis, prefix):
    sid, session = await auth.start_session(ADMIN)
    assert await auth.session(sid) == session and len(session.csrf) >= 32
    key = [k async for k in redis.scan_iter(f"{prefix}console:session:*")][0]
    assert sid not in key and 3590 <= await redis.ttl(key) <= 3600
    assert await auth.session("not-a-session") is None and await auth.session(None) is None
    await auth.end_session(sid)
    assert await auth.session(sid) is None


async def test_login_attempts_are_limited_per_address(auth):
    allowed = [await auth.allow_attempt("10.0.0.1") for _ in range(LOGIN_ATTEMPTS_PER_MINUTE + 2)]
    assert allowed == [True] * LOGIN_ATTEMPTS_PER_MINUTE + [False, False]
    assert await auth.allow_attempt("10.0.0.2")


def test_csrf_tokens_must_match():
    session = Session(ADMIN, "a" * 43, time.time() + 60)
    assert csrf_ok(session, "a" * 43)
    assert not csrf_ok(session, None) and not csrf_ok(session, "") and not csrf_ok(session, "b" * 43)
