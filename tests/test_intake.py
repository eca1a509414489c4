"""The update stream: stored before acknowledged, handled once, nothing lost when a consumer dies."""
import asyncio
import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bot import intake
from bot.intake import UpdateStream, storable


def payload(update_id: int, chat: int = 1) -> str:
    return json.dumps({"update_id": update_id, "message": {"chat": {"id": chat}}})


async def consume_until(stream: UpdateStream, handled: list, count: int, block: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()

    async def handle(data: dict) -> None:
        if block is not None:
            await block.wait()
        handled.append(data["update_id"])
        if len(handled) >= count:
            stop.set()

    await asyncio.wait_for(stream.consume(handle, stop), 10)


def test_what_is_stored_is_valid_unicode():
    # JSON may spell a lone surrogate, which UTF-8 (Redis) cannot hold; a pair spelled as two escapes is one character
    data = json.loads('{"update_id": 1, "message": {"text": "\\ud800问", "entities": [{"x": "\\ud83d\\ude00"}], "\\udfff": 2}}')
    assert storable(data) == {"update_id": 1, "message": {"text": "\ufffd问", "entities": [{"x": "😀"}], "\ufffd": 2}}
    assert storable({"text": "正常 text", "n": None, "ok": True}) == {"text": "正常 text", "n": None, "ok": True}
    json.dumps(storable(data), ensure_ascii=False).encode()  # what Redis is given: no UnicodeEncodeError


async def test_a_redelivery_is_dropped_when_it_arrives(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    assert await stream.add(1, payload(1)) and not await stream.add(1, payload(1)) and await stream.add(2, payload(2))
    assert not await UpdateStream(redis, prefix, "b").add(2, payload(2))  # another replica agrees
    handled: list[int] = []
    await consume_until(stream, handled, 2)
    assert handled == [1, 2] and await stream.pending() == 0
    assert await redis.xlen(f"{prefix}updates") == 0  # acknowledged entries leave the stream
    assert not await stream.add(1, payload(1))  # and stay known as handled


async def test_entries_are_handed_over_in_stream_order(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    for i in range(1, 101):
        await stream.add(i, payload(i))
    handled: list[int] = []
    await consume_until(stream, handled, 100)
    assert handled == list(range(1, 101))


async def test_what_a_dead_consumer_read_is_handled_after_its_restart(redis, prefix):
    stream = UpdateStream(redis, prefix, "replica-1")
    for i in range(1, 6):
        await stream.add(i, payload(i))
    never = asyncio.Event()
    with pytest.raises(TimeoutError):  # read all five, finished none: then the process "dies"
        await asyncio.wait_for(consume_until(stream, [], 5, block=never), 1.5)
    assert await stream.pending() == 5
    handled: list[int] = []
    await consume_until(UpdateStream(redis, prefix, "replica-1"), handled, 5)  # restarted under the same name
    assert sorted(handled) == [1, 2, 3, 4, 5] and await stream.pending() == 0


async def test_another_replica_takes_over_a_dead_ones_entries(redis, prefix, monkeypatch):
    monkeypatch.setattr(intake, "CLAIM_IDLE_MS", 300)
    monkeypatch.setattr(intake, "HEARTBEAT_S", 0.2)
    dead = UpdateStream(redis, prefix, "replica-1")
    for i in range(1, 4):
        await dead.add(i, payload(i))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consume_until(dead, [], 3, block=asyncio.Event()), 1.0)
    handled: list[int] = []
    await consume_until(UpdateStream(redis, prefix, "replica-2"), handled, 3)
    assert sorted(handled) == [1, 2, 3] and await dead.pending() == 0


@pytest.mark.parametrize("window", [8, 1])
async def test_a_live_replicas_slow_entries_are_not_taken_over(redis, prefix, monkeypatch, window):
    """Also when every slot of the replica is busy (window 1): it waited for room without touching its entries, and
    another replica took them over and answered them again."""
    monkeypatch.setattr(intake, "CLAIM_IDLE_MS", 300)
    monkeypatch.setattr(intake, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(intake, "READ_BLOCK_MS", 50)
    slow = UpdateStream(redis, prefix, "replica-1", max_in_flight=window)
    other = UpdateStream(redis, prefix, "replica-2")
    await slow.add(1, payload(1))
    release, slow_handled, other_handled = asyncio.Event(), [], []
    slow_task = asyncio.create_task(consume_until(slow, slow_handled, 1, block=release))
    await asyncio.sleep(0.3)  # replica-1 holds the entry
    other_task = asyncio.create_task(consume_until(other, other_handled, 1))
    await asyncio.sleep(1.2)  # four claim periods
    release.set()
    await slow_task
    other_task.cancel()
    assert slow_handled == [1] and other_handled == []


async def test_an_update_marked_done_before_a_crash_is_not_handled_again(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    await stream.add(7, payload(7))
    await stream.add(8, payload(8))
    await redis.set(stream.seen_key(7), "done")  # answered; the crash came before the acknowledgement
    handled: list[int] = []
    await consume_until(stream, handled, 1)  # returns once every entry read is finished
    assert handled == [8] and await stream.pending() == 0


async def test_an_update_whose_answer_went_out_before_a_crash_is_not_answered_again(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    for i in (7, 8):
        await stream.add(i, payload(i))
    ttl = await redis.ttl(stream.seen_key(7))
    await stream.mark_answered(7)  # the reply is out; the process died before the rest of the handling
    assert await redis.get(stream.seen_key(7)) == intake.ANSWERED and 0 < await redis.ttl(stream.seen_key(7)) <= ttl
    await stream.mark_answered(99)  # an update the stream never held (the terminal chat's): no key made
    assert not await redis.exists(stream.seen_key(99))
    handled: list[int] = []
    await consume_until(stream, handled, 1)
    assert handled == [8] and await stream.pending() == 0
    assert await redis.get(stream.seen_key(7)) == "done"  # acknowledged and marked done like any other
    assert not await stream.add(7, payload(7))  # and a redelivery from Telegram is dropped


async def test_garbage_in_the_stream_is_dropped_and_a_failing_handler_does_not_loop(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    await redis.xadd(f"{prefix}updates", {"update": "{not json"})
    await stream.add(1, payload(1))
    await stream.add(2, payload(2))
    stop, calls = asyncio.Event(), []

    async def handle(data: dict) -> None:
        calls.append(data["update_id"])
        if data["update_id"] == 1:
            raise RuntimeError("a bug")
        stop.set()

    await asyncio.wait_for(stream.consume(handle, stop), 10)
    assert calls == [1, 2] and await stream.pending() == 0


async def test_an_update_its_handler_could_not_serve_is_handled_again(redis, prefix):
    stream = UpdateStream(redis, prefix, "a")
    await stream.add(1, payload(1))
    stop, calls = asyncio.Event(), []

    async def handle(data: dict) -> None:  # the first time, Redis was away for the handler: "temporarily unavailable"
        calls.append(data["update_id"])
        if len(calls) == 1:
            stream.retry_later(data["update_id"])
        else:
            stop.set()

    await asyncio.wait_for(stream.consume(handle, stop), 10)
    assert calls == [1, 1] and await stream.pending() == 0


async def test_an_update_tried_again_waits_longer_each_time(redis, prefix, monkeypatch):
    """Redis refusing writes (or Telegram's API away) for a while: each try asked the model again, about once a second
    for as long as it lasted; now after AGAIN_S[0], then twice that, and so on."""
    monkeypatch.setattr(intake, "AGAIN_S", (0.2, 60.0))
    monkeypatch.setattr(intake, "READ_BLOCK_MS", 50)
    stream = UpdateStream(redis, prefix, "a")
    await stream.add(1, payload(1))
    stop, times = asyncio.Event(), []
    loop = asyncio.get_running_loop()

    async def handle(data: dict) -> None:
        times.append(loop.time())
        if len(times) < 4:
            assert stream.retry_later(data["update_id"])
        else:
            stop.set()

    await asyncio.wait_for(stream.consume(handle, stop), 10)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert [round(g, 1) >= want for g, want in zip(gaps, (0.2, 0.4, 0.8))] == [True] * 3, gaps
    assert await stream.pending() == 0


async def test_an_update_that_never_gets_through_is_given_up_after_max_tries(redis, prefix, monkeypatch):
    monkeypatch.setattr(intake, "AGAIN_S", (0.01, 60.0))
    monkeypatch.setattr(intake, "MAX_TRIES", 3)
    monkeypatch.setattr(intake, "READ_BLOCK_MS", 50)
    stream = UpdateStream(redis, prefix, "a")
    await stream.add(1, payload(1))
    stop, calls = asyncio.Event(), []

    async def handle(data: dict) -> None:
        calls.append(data["update_id"])
        stream.retry_later(data["update_id"])  # Telegram's API away, every time
        asyncio.get_running_loop().call_later(1.5, stop.set)

    await asyncio.wait_for(stream.consume(handle, stop), 10)
    assert calls == [1] * 4 and await stream.pending() == 0  # the first try and three more


async def test_an_update_whose_answer_is_out_is_not_tried_again(redis, prefix, monkeypatch):
    """Redis away just after the answer went out (its mark not written, the rest of the handling failing): handling it
    again answered the customer twice, with "temporarily unavailable" in between."""
    monkeypatch.setattr(intake, "AGAIN_S", (0.1, 60.0))
    stream = UpdateStream(redis, prefix, "a")
    await stream.add(1, payload(1))
    stop, calls = asyncio.Event(), []

    async def refused(*args, **kwargs):
        raise RedisConnectionError("Redis is restarting")

    async def handle(data: dict) -> None:
        calls.append(data["update_id"])
        with monkeypatch.context() as away:
            away.setattr(redis, "set", refused)
            with pytest.raises(RedisConnectionError):
                await stream.mark_answered(data["update_id"])  # the answer is out; its mark met Redis away
        stream.retry_later(data["update_id"])  # and so did the handler's next Redis call (bot.errors)
        asyncio.get_running_loop().call_later(1.0, stop.set)

    await asyncio.wait_for(stream.consume(handle, stop), 10)
    assert calls == [1] and await stream.pending() == 0 and await redis.get(stream.seen_key(1)) == "done"


async def test_what_is_remembered_as_answered_stays_bounded(redis, prefix, monkeypatch):
    """The terminal chat's updates are marked answered and never acknowledged here: the memory of them is capped."""
    monkeypatch.setattr(intake, "MAX_ANSWERED", 10)
    stream = UpdateStream(redis, prefix, "a")
    for update_id in range(1, 26):
        await stream.mark_answered(update_id)
    assert [not stream.retry_later(i) for i in (16, 25)] == [True, True]  # the newest are remembered
    assert stream.retry_later(15)  # the oldest forgotten (a retry is possible again, as without the memory)


async def test_a_backlog_larger_than_the_room_in_flight_is_handled_after_a_restart(redis, prefix):
    for i in range(1, 101):
        await UpdateStream(redis, prefix, "r").add(i, payload(i, chat=i))
    with pytest.raises(TimeoutError):  # the dead process read 100 and finished none
        await asyncio.wait_for(consume_until(UpdateStream(redis, prefix, "r"), [], 100, block=asyncio.Event()), 1.5)
    handled: list[int] = []  # within consume_until's 10 s: not left to the 30 s take-over of idle entries
    await consume_until(UpdateStream(redis, prefix, "r", max_in_flight=8), handled, 100)  # 8 at a time, all of it
    assert sorted(handled) == list(range(1, 101))
