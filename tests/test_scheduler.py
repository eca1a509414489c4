"""The scheduler alone: admission within the prompt budget, lowest slots first, cancellation, limits."""
import pytest

from llmcore.sampling import SamplingParams
from llmcore.scheduler import QueueFull, Scheduler, Sequence


def seq(prompt_len: int) -> Sequence:
    return Sequence([5] * prompt_len, SamplingParams(), None)


def test_waiting_sequences_are_admitted_within_the_budget_and_running_ones_decode():
    scheduler = Scheduler(max_batch=4, max_queue=8, max_prefill_tokens=100)
    a, b, c = seq(60), seq(30), seq(20)
    for s in (a, b, c):
        scheduler.add(s)
    assert scheduler.decoding() == [] and scheduler.admit() == [a, b]  # 60 + 30 fit; 20 more would not
    assert [a.slot, b.slot] == [0, 1]
    assert scheduler.decoding() == [a, b] and scheduler.admit() == [c] and c.slot == 2


def test_a_prompt_longer_than_the_budget_is_still_admitted_alone():
    scheduler = Scheduler(max_batch=2, max_queue=4, max_prefill_tokens=10)
    big = seq(50)
    scheduler.add(big)
    assert scheduler.admit() == [big]


def test_released_slots_are_reused_lowest_first():
    scheduler = Scheduler(max_batch=3, max_queue=8, max_prefill_tokens=1000)
    seqs = [seq(2) for _ in range(3)]
    for s in seqs:
        scheduler.add(s)
    scheduler.admit()
    scheduler.release(seqs[1])
    scheduler.release(seqs[0])
    assert scheduler.free_slots == [0, 1]
    late = seq(2)
    scheduler.add(late)
    assert scheduler.admit() == [late] and late.slot == 0


def test_cancelled_sequences_finish_whether_waiting_or_running():
    scheduler = Scheduler(max_batch=1, max_queue=4, max_prefill_tokens=100)
    running, waiting = seq(3), seq(3)
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.admit()
    running.cancelled = waiting.cancelled = True
    assert set(scheduler.retire_cancelled()) == {running, waiting}
    assert running.output.finish_reason == waiting.output.finish_reason == "cancelled"
    assert not scheduler.waiting and scheduler.decoding() == []  # a finished sequence does not decode


def test_the_queue_limit_and_drain():
    scheduler = Scheduler(max_batch=1, max_queue=2, max_prefill_tokens=100)
    first, second = seq(3), seq(3)
    scheduler.add(first)
    scheduler.add(second)
    with pytest.raises(QueueFull):
        scheduler.add(seq(3))
    scheduler.admit()
    assert scheduler.drain() == [second, first] and not scheduler.waiting
