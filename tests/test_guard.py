"""Guard: a fast user gets one notice, then silence."""
from bot.guard import Guard


async def test_rate_limit_notice_once_then_silence_per_user(redis, prefix):
    guard = Guard(redis, prefix, per_minute=3)
    verdicts = [await guard.admit(1) for _ in range(6)]
    assert verdicts == ["ok", "ok", "ok", "notice", "silent", "silent"]
    assert await guard.admit(2) == "ok"  # others are not affected
    real_scan, redis.scan_iter = redis.scan_iter, None  # its counts by name: a scan per /forget walks every key
    try:
        await guard.forget_user(1)
    finally:
        redis.scan_iter = real_scan
    assert await guard.admit(1) == "ok"
