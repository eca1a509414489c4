"""Durable intake: an update is in Redis before Telegram hears "got it", and leaves Redis only once handled.

    stream = UpdateStream(redis, prefix="kefu:", consumer="bot-1")
    if await stream.add(update_id, raw_json): ...      # stored (False: seen before, a redelivery: dropped)
    await stream.consume(handle, stop)                   # handle(update_dict) for each, per its entry's life:

Telegram (webhook POST, or our getUpdates loop) → `add`: one Lua script checks the duplicate key
(`update:<id>`) and appends to the stream `updates` in one step → only then the 200 (or the next getUpdates
offset). Consumers read with a consumer group (`bots`): an entry is acknowledged and deleted (XACK, XDEL) only
after its handlers have finished — the answer sent and logged — and in the same transaction `update:<id>` is
marked done. So:

- a crash loses nothing: what the dead process had read stays pending; a restarted process (same consumer
  name) reads its own pending entries first, and any other replica takes over entries idle for CLAIM_IDLE_MS
  (XAUTOCLAIM). Live consumers touch their entries in flight every HEARTBEAT_S, so a slow answer is not stolen;
- a redelivery of a stored update is dropped at intake, and a pending entry whose update is marked done, or
  marked answered (`answered`: set by the reply the moment Telegram has taken the answer, before the rest of
  the handling), is acknowledged without being handled again: answers go out once (at least once only for a
  crash between Telegram taking the answer and that mark, one Redis round trip; the mark is remembered in the
  process first, so Redis away at that moment does not make the update be tried again);
- an update whose handler met Redis or Telegram's API away (`retry_later`) stays pending and is tried again after
  1, 2, 4 ... 60 s (AGAIN_S), touched by the heartbeat meanwhile; the heartbeat runs while every slot is busy too.

Per-chat order is kept by the caller (PerChatOrder) as long as entries are handed over in stream order.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger(__name__)

GROUP = "bots"
ANSWERED = "answered"  # the value of update:<id> once its answer is out (then "done" once handled)
DEDUPE_TTL_S = 24 * 3600  # Telegram redelivers for at most a day
READ_COUNT = 64
# Updates being handled at once. Fewer means less event-loop lag under a burst, so a shorter window in which a
# crash leaves an answer sent but not marked (bench/faults.py, 300 updates, kill -9: 256 → 11–16 answered twice,
# 64 → 7, 32 → 1–6); more means FAQ answers wait less behind slow model answers (mixed burst, FAQ p50: 256 →
# 5.2–5.8 s, 64 → 8.3 s, 32 → 12.0 s, where the outbound limit alone imposes ~9 s).
MAX_IN_FLIGHT = 64
READ_BLOCK_MS = 1000  # below the pool's socket timeout
CLAIM_IDLE_MS = 30_000  # an entry nobody touched this long belongs to a dead consumer
HEARTBEAT_S = 5.0
RETRY_S = (0.2, 5.0)  # back-off while Redis is away: first, last
# An update whose handler could not finish (Redis away, Telegram's API away) is tried again after 1, 2, 4 ... 60 s,
# counted per update: before, it was read again at once, and each try asked the model again (~1 a second for as long as
# Redis refused writes)
AGAIN_S = (1.0, 60.0)
MAX_ANSWERED = 4096  # update ids remembered as answered until acknowledged (far more than are ever in flight)
MAX_TRIES = 30  # then the update is given up, with an error in the log (~25 minutes of tries): nothing loops forever
_SURROGATE = re.compile("[\ud800-\udfff]")

# KEYS: the duplicate key, the stream. ARGV: the update's JSON, the key's TTL. 1: stored, 0: seen before.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'update', ARGV[1])
redis.call('SET', KEYS[1], 'queued', 'EX', ARGV[2])
return 1
"""

Handle = Callable[[dict], Awaitable[None]]


def storable(value):
    """`value` (an update's JSON data) with every string valid Unicode: JSON may spell a lone surrogate ("\\ud800"), which
    UTF-8 — Redis, the FAQ encoders — cannot hold, so one such message stopped the whole intake. A lone surrogate
    becomes U+FFFD; a pair spelled as two escapes becomes its one character."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace") if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


class UpdateStream:
    def __init__(self, redis: Redis, prefix: str, consumer: str, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = f"{prefix}updates"
        self.consumer = consumer
        self.max_in_flight = max_in_flight
        self._add = redis.register_script(_ADD)
        self._in_flight: dict[str, asyncio.Task] = {}
        self._own_backlog = True
        self._unfinished: dict[str, int | None] = {}  # handled, acknowledgement owed
        self._retry: set[int] = set()  # update ids whose handler asked to be tried again (retry_later)
        self._tries: dict[int, int] = {}  # update id -> times tried again so far
        self._deferred: dict[str, float] = {}  # entry id -> loop time before which it is not tried again
        self._answered: dict[int, None] = {}  # update ids whose answer is out, until acknowledged (oldest first, capped)
        self._last_heartbeat = 0.0

    def seen_key(self, update_id: int) -> str:
        return f"{self.prefix}update:{update_id}"

    async def mark_answered(self, update_id: int) -> None:
        """The update's answer went out: a redelivery after a crash must not send it again. Only for an update this
        stream holds (XX; the terminal chat's have no key), keeping its time to live. Remembered in this process first:
        with Redis away at this moment, the update is still not tried again (retry_later)."""
        self._answered[update_id] = None
        while len(self._answered) > MAX_ANSWERED:  # the terminal chat's updates are never acknowledged here
            del self._answered[next(iter(self._answered))]
        await self.redis.set(self.seen_key(update_id), ANSWERED, xx=True, keepttl=True)

    async def add(self, update_id: int, payload: str) -> bool:
        """Store one update (its JSON); False if this update id was stored before. Raises RedisError if Redis is away:
        then the update must not be acknowledged to Telegram."""
        return bool(await self._add(keys=[self.seen_key(update_id), self.key], args=[payload, DEDUPE_TTL_S]))

    async def pending(self) -> int:
        """Entries read by some consumer and not yet acknowledged."""
        try:
            return int((await self.redis.xpending(self.key, GROUP))["pending"])
        except ResponseError:  # no stream or group yet
            return 0

    async def consume(self, handle: Handle, stop: asyncio.Event) -> None:
        """Hand every entry to `handle` until `stop` is set; then wait for those in flight. Survives Redis going away."""
        loop = asyncio.get_running_loop()
        try:
            await self._loop(handle, stop, loop)
        except asyncio.CancelledError:  # the process is going down hard: what is unfinished stays pending
            for task in self._in_flight.values():
                task.cancel()
            raise
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _loop(self, handle: Handle, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        delay = RETRY_S[0]
        self._own_backlog = True  # first our own pending entries (a restart of this consumer), then new ones
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                if self._unfinished:
                    await self._finish_owed()
                if loop.time() - self._last_heartbeat >= HEARTBEAT_S:
                    await self._heartbeat(loop)
                    await self._start(await self._claim_abandoned(), handle)
                await self._wait_for_room(stop, loop)
                if stop.is_set():
                    break
                room = self.max_in_flight - len(self._in_flight)
                if self._deferred and min(self._deferred.values()) <= loop.time():  # an update's time to be tried again
                    self._own_backlog = True
                if self._own_backlog:  # from the start of our pending entries, the ones being handled here included
                    held = len(self._in_flight) + len(self._unfinished) + len(self._deferred)
                    entries = await self._read("0", room + held, block=None)
                    self._own_backlog = bool(entries)
                else:
                    entries = await self._read(">", room, block=READ_BLOCK_MS)
                await self._start(entries, handle)
                delay = RETRY_S[0]
            except RedisError as exc:  # a Redis restarted without its data has lost the group too
                group_ready = False
                logger.warning("update stream: Redis unavailable (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RETRY_S[1])

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, start: str, count: int, block: int | None) -> list[tuple[str, dict]]:
        """Entries to start: not being handled here, not waiting to be acknowledged, not waiting to be tried again."""
        reply = await self.redis.xreadgroup(GROUP, self.consumer, {self.key: start}, count=count, block=block)
        now = asyncio.get_running_loop().time()
        return [(entry_id, fields) for entry_id, fields in (reply[0][1] if reply else [])
                if entry_id not in self._in_flight and entry_id not in self._unfinished and self._deferred.get(entry_id, now) <= now]

    async def _claim_abandoned(self) -> list[tuple[str, dict]]:
        """Entries another consumer read and left untouched for CLAIM_IDLE_MS: it died."""
        _, entries, *_ = await self.redis.xautoclaim(self.key, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=READ_COUNT)
        entries = [(entry_id, fields) for entry_id, fields in entries
                   if entry_id not in self._in_flight and entry_id not in self._unfinished]
        if entries:
            logger.info("update stream: took over %d entries left idle", len(entries))
        return entries

    async def _heartbeat(self, loop: asyncio.AbstractEventLoop) -> None:
        """Touch the entries being handled here (or to be tried again here), so no other replica takes them over."""
        self._last_heartbeat = loop.time()
        mine = [*self._in_flight, *self._unfinished, *self._deferred]
        if mine:
            await self.redis.xclaim(self.key, GROUP, self.consumer, 0, mine, justid=True)

    async def _wait_for_room(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        """Until a slot is free, heartbeats included: with every slot busy for over CLAIM_IDLE_MS (answers held by
        Telegram's flood control), another replica took the entries over and answered them again."""
        while len(self._in_flight) >= self.max_in_flight and not stop.is_set():
            await asyncio.wait(list(self._in_flight.values()), return_when=asyncio.FIRST_COMPLETED, timeout=HEARTBEAT_S)
            if loop.time() - self._last_heartbeat >= HEARTBEAT_S:
                await self._heartbeat(loop)

    async def _start(self, entries: list[tuple[str, dict]], handle: Handle) -> None:
        """One task per entry, started in stream order with nothing awaited in between: each takes its place in its
        chat's line (PerChatOrder) in this order."""
        if not entries:
            return
        updates = [_parse(entry_id, fields) for entry_id, fields in entries]
        ids = [u.get("update_id") if u else None for u in updates]
        keys = [self.seen_key(i) for i in ids if i is not None]
        done = dict(zip(keys, await self.redis.mget(keys))) if keys else {}
        for (entry_id, _), update, update_id in zip(entries, updates, ids):
            self._deferred.pop(entry_id, None)
            again = update_id is not None and (done.get(self.seen_key(update_id)) in ("done", ANSWERED) or update_id in self._answered)
            if again:
                logger.info("update %s was handled before a crash; not again", update_id)
            work = handle(update) if update is not None and not again else None
            self._in_flight[entry_id] = asyncio.create_task(self._one(entry_id, update_id, work))
        await asyncio.sleep(0)

    async def _one(self, entry_id: str, update_id: int | None, work: Awaitable[None] | None) -> None:
        try:
            if work is not None:
                await work
            if update_id is not None and update_id in self._retry:  # the handler met Redis or Telegram away: again later
                self._retry.discard(update_id)
                tries = self._tries[update_id] = self._tries.get(update_id, 0) + 1
                if tries <= MAX_TRIES:
                    self._deferred[entry_id] = asyncio.get_running_loop().time() + min(AGAIN_S[1], AGAIN_S[0] * 2 ** (tries - 1))
                    return
                logger.error("update stream: update %s could not be handled in %d tries; given up", update_id, MAX_TRIES)
            try:
                await self._finish(entry_id, update_id)
            except RedisError as exc:  # handled: only the acknowledgement is owed, never a second answer
                logger.warning("update stream: entry %s handled, acknowledged once Redis answers (%s)", entry_id, exc)
                self._unfinished[entry_id] = update_id
        except Exception:  # a bug: logged, and the entry is not retried forever
            logger.exception("update stream: entry %s failed", entry_id)
            with contextlib.suppress(RedisError):
                await self._finish(entry_id, update_id)
        finally:
            self._in_flight.pop(entry_id, None)

    def tried_before(self, update_id: int) -> bool:
        """Whether this update is being tried again here (retry_later): the rate limit counted it the first time."""
        return update_id in self._tries

    def retry_later(self, update_id: int) -> bool:
        """Called by a handler that could not do its work because Redis or Telegram's API was away: the update stays
        pending and is handled again later (AGAIN_S). False, and nothing is tried again, once its answer is out
        (mark_answered): a second try would send the answer twice (Redis away after it went out)."""
        if update_id in self._answered:
            return False
        self._retry.add(update_id)
        return True

    async def _finish_owed(self) -> None:
        for entry_id, update_id in list(self._unfinished.items()):
            await self._finish(entry_id, update_id)
            del self._unfinished[entry_id]

    async def _finish(self, entry_id: str, update_id: int | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            if update_id is not None:
                pipe.set(self.seen_key(update_id), "done", ex=DEDUPE_TTL_S)
            await pipe.xack(self.key, GROUP, entry_id).xdel(self.key, entry_id).execute()
        if update_id is not None:
            self._answered.pop(update_id, None)
            self._tries.pop(update_id, None)


def _parse(entry_id: str, fields: dict | None) -> dict | None:
    try:
        data = json.loads((fields or {}).get("update", "null"))
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        logger.warning("update stream: entry %s is not an update; dropped", entry_id)
        return None
    return data
