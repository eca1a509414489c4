"""Engine: batched output equals one-at-a-time output; limits, cancellation and failures stay per request."""
import random

import pytest
import torch

from llmcore.engine import CACHE_ROWS, Engine, EngineError, QueueFull
from llmcore.model import ARCHS, ModelConfig, build_model
from llmcore.sampling import SamplingParams, generate

VOCAB, STOP = 50, 3


def tiny(arch: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, block_size=96)).eval()


def run_all(engine: Engine, arrivals: dict[int, list], rows: list[int] | None = None) -> dict[int, list[int]]:
    """Step until done; arrivals maps step number -> [(key, prompt, params)] added before that step; `rows` gets the
    cache's rows after each step."""
    seqs, step = {}, 0
    while engine.has_work() or any(k >= step for k in arrivals):
        for key, prompt, params in arrivals.get(step, []):
            seqs[key] = engine.add(prompt, params)
        engine.step()
        if rows is not None:
            rows.append(engine.cache.lengths.shape[0])
        step += 1
        assert step < 10_000
    return {key: seq.output for key, seq in seqs.items()}


def mixed_requests(n: int, seed: int = 0):
    rng = random.Random(seed)
    return [(i, [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 40))], rng.randint(1, 40)) for i in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_in_a_batch_of_32_equals_alone(arch):
    model = tiny(arch)
    requests = mixed_requests(32)
    arrivals: dict[int, list] = {}
    for key, prompt, max_new in requests:  # staggered arrival: some join while others decode
        arrivals.setdefault(key % 7 * 3, []).append((key, prompt, SamplingParams(max_new_tokens=max_new)))
    batched = run_all(Engine(model, {STOP}, max_batch=32, max_prefill_tokens=64), arrivals)
    for key, prompt, max_new in requests:
        [alone] = generate(model, [prompt], SamplingParams(max_new_tokens=max_new), {STOP})
        assert batched[key].token_ids == alone.token_ids, key
        assert batched[key].finish_reason == alone.finish_reason
        assert batched[key].logprobs == pytest.approx(alone.logprobs, abs=5e-3)  # oneDNN's LSTM varies with batch size


def test_prompts_are_prefilled_with_their_own_threads_and_decoding_keeps_the_processs(monkeypatch):
    """prefill_threads: each prefill forward runs with that many torch threads, each decode forward with the
    process's own, which are put back after every step (also when a prefill fails); answers do not change."""
    model = tiny("transformer")
    seen: list[tuple[str, int]] = []
    step = model.step

    def counted(idx, cache, *args, **kwargs):
        seen.append(("prefill" if kwargs.get("rows") is not None else "decode", torch.get_num_threads()))
        return step(idx, cache, *args, **kwargs)

    monkeypatch.setattr(model, "step", counted)
    before = torch.get_num_threads()
    requests = mixed_requests(6)
    arrivals = {key: [(key, prompt, SamplingParams(max_new_tokens=max_new))] for key, prompt, max_new in requests}
    threaded = run_all(Engine(model, {STOP}, max_batch=8, prefill_threads=before + 1), arrivals)
    assert {kind for kind, _ in seen} == {"prefill", "decode"}
    assert all(n == (before + 1 if kind == "prefill" else before) for kind, n in seen)
    assert torch.get_num_threads() == before
    plain = run_all(Engine(model, {STOP}, max_batch=8), arrivals)
    assert {k: o.token_ids for k, o in threaded.items()} == {k: o.token_ids for k, o in plain.items()}

    def broken(*args, **kwargs):
        raise RuntimeError("prefill broke")

    engine = Engine(model, {STOP}, max_batch=8, prefill_threads=before + 1)
    monkeypatch.setattr(engine, "_prefill", broken)
    engine.add([5, 6, 7], SamplingParams(max_new_tokens=3))
    with pytest.raises(RuntimeError, match="prefill broke"):
        engine.step()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("arch", ARCHS)
def test_the_cache_grows_in_buckets_as_more_run_shrinks_when_idle_and_answers_stay_the_same(arch):
    """A max_batch of 256 starts with a 32-row cache; 70 sequences at once grow it to 128 rows, copying the running
    ones over mid-answer; every answer equals the one-at-a-time answer. Idle again, the cache is 32 rows again, and
    the same burst gives the same answers."""
    model = tiny(arch)
    requests = mixed_requests(70, seed=3)
    engine = Engine(model, {STOP}, max_batch=256, max_queue=256, max_prefill_tokens=4096)
    assert engine.cache.lengths.shape[0] == CACHE_ROWS
    arrivals: dict[int, list] = {}
    for key, prompt, max_new in requests:  # 20 first, the rest while they decode
        arrivals.setdefault(0 if key < 20 else 2 + key % 3, []).append((key, prompt, SamplingParams(max_new_tokens=max_new)))
    rows: list[int] = []
    batched = run_all(engine, arrivals, rows)
    assert max(rows) == 128 and rows[-1] == engine.cache.lengths.shape[0] == CACHE_ROWS
    for key, prompt, max_new in requests:
        [alone] = generate(model, [prompt], SamplingParams(max_new_tokens=max_new), {STOP})
        assert batched[key].token_ids == alone.token_ids, key
    again = run_all(engine, arrivals)
    assert {key: out.token_ids for key, out in again.items()} == {key: out.token_ids for key, out in batched.items()}


def test_seeded_sampling_in_a_batch_equals_alone():
    model = tiny("transformer")
    params = [SamplingParams(temperature=1.2, top_p=0.9, seed=s, max_new_tokens=20) for s in range(8)]
    prompts = [[5 + s, 6, 7] for s in range(8)]
    batched = run_all(Engine(model, {STOP}), {0: [(s, prompts[s], params[s]) for s in range(8)]})
    for s in range(8):
        assert batched[s].token_ids == generate(model, [prompts[s]], params[s], {STOP})[0].token_ids


def test_a_seeded_request_gives_the_same_text_alone_and_among_32_mixed_requests():
    """Batch composition never changes a seeded draw: greedy, penalised and other sampled rows around it,
    arriving at different steps, leave its tokens as they were when it ran alone."""
    model = tiny("transformer")
    target = ([6, 9, 12], SamplingParams(temperature=1.0, top_p=0.95, repetition_penalty=1.2, seed=42, max_new_tokens=30))
    [alone] = run_all(Engine(model, set(), max_batch=4), {0: [("t", *target)]}).values()
    rng = random.Random(1)
    arrivals: dict[int, list] = {}
    for key, prompt, max_new in mixed_requests(31, seed=5):
        params = [SamplingParams(max_new_tokens=max_new), SamplingParams(repetition_penalty=1.2, max_new_tokens=max_new),
                  SamplingParams(temperature=0.8, top_k=10, max_new_tokens=max_new, seed=rng.randrange(99)),
                  SamplingParams(temperature=1.3, max_new_tokens=max_new)][key % 4]
        arrivals.setdefault(key % 5, []).append((key, prompt, params))
    arrivals.setdefault(2, []).append(("t", *target))
    crowded = run_all(Engine(model, set(), max_batch=32, max_prefill_tokens=48), arrivals)
    assert len(alone.token_ids) == 30 and crowded["t"].token_ids == alone.token_ids
    assert crowded["t"].logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_more_requests_than_slots_all_finish_and_slots_are_reused():
    model = tiny("lstm")
    engine = Engine(model, {STOP}, max_batch=4)
    outputs = run_all(engine, {0: [(i, [4 + i, 9], SamplingParams(max_new_tokens=5)) for i in range(13)]})
    assert all(o.finish_reason in ("stop", "length") for o in outputs.values())
    assert all(len(o.token_ids) <= 5 for o in outputs.values())
    assert sorted(engine.free_slots) == [0, 1, 2, 3] and engine.num_running == 0


def test_prefill_budget_keeps_decoding_flowing():
    engine = Engine(tiny("transformer"), set(), max_batch=8, max_prefill_tokens=40)
    first = engine.add([4 + i % 40 for i in range(30)], SamplingParams(max_new_tokens=30))
    engine.step()
    later = [engine.add([4 + i % 40 for i in range(30)], SamplingParams(max_new_tokens=30)) for _ in range(3)]
    for expected_running in (2, 3, 4):  # one 30-token prompt per step fits the budget of 40
        engine.step()
        assert engine.num_running == expected_running
    assert len(first.output.token_ids) == 4  # the running sequence got a token at every step
    assert all(s.slot is not None for s in later)


def test_cancel_frees_the_slot_at_the_next_step():
    engine = Engine(tiny("transformer"), set(), max_batch=2)
    seq = engine.add([5, 6, 7], SamplingParams(max_new_tokens=50))
    engine.step()
    assert engine.free_slots == [1]
    engine.cancel(seq)
    events = engine.step()
    assert seq.output.finish_reason == "cancelled" and any(e.seq is seq and e.finished for e in events)
    assert engine.free_slots == [0, 1] and not engine.has_work()


def test_queue_limit_and_prompt_limits():
    engine = Engine(tiny("transformer"), set(), max_batch=1, max_queue=2)
    engine.add([5], SamplingParams())
    engine.add([5], SamplingParams())
    with pytest.raises(QueueFull):
        engine.add([5], SamplingParams())
    with pytest.raises(EngineError, match="no room"):
        engine.add([5] * 96, SamplingParams())
    with pytest.raises(EngineError, match="empty"):
        engine.add([], SamplingParams())


def test_context_limit_ends_with_length():
    engine = Engine(tiny("transformer"), set(), max_batch=2)
    seq = engine.add([4 + i % 40 for i in range(90)], SamplingParams(max_new_tokens=50, temperature=1.0, seed=1))
    while engine.has_work():
        engine.step()
    assert seq.output.finish_reason == "length" and len(seq.prompt) + len(seq.output.token_ids) == 96


def test_token_ids_outside_the_vocabulary_are_refused_at_add_and_the_rest_run():
    engine = Engine(tiny("transformer"), {STOP}, max_batch=4)
    good = [engine.add([5, 6, 7 + i], SamplingParams(max_new_tokens=10)) for i in range(3)]
    for bad in ([5, VOCAB + 1000], [5, VOCAB], [-1, 5]):
        with pytest.raises(EngineError, match="token ids"):
            engine.add(bad, SamplingParams(max_new_tokens=10))
    while engine.has_work():
        engine.step()
    assert all(s.output.finish_reason in ("stop", "length") and s.error is None for s in good)
    assert engine.free_slots == [0, 1, 2, 3] and engine.num_waiting == 0


def test_ignore_stop_generates_exactly_max_new_tokens():
    model = tiny("transformer")
    first = int(model(torch.tensor([[5, 6]]))[0, -1].argmax())
    engine = Engine(model, {first}, max_batch=2)
    stopped = engine.add([5, 6], SamplingParams(max_new_tokens=12))
    forced = engine.add([5, 6], SamplingParams(max_new_tokens=12), ignore_stop=True)
    while engine.has_work():
        engine.step()
    assert stopped.output.token_ids == [] and stopped.output.finish_reason == "stop"
    assert len(forced.output.token_ids) == 12 and forced.output.finish_reason == "length"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_reused_slot_starts_clean(arch):
    """A slot that served one request must not leak its state (KV entries, LSTM h/c) into the next."""
    model = tiny(arch)
    engine = Engine(model, {STOP}, max_batch=1)
    params = SamplingParams(max_new_tokens=20)
    prompts = [[9, 8, 7, 6, 5], [11, 12], [30, 31, 32]]
    outputs = run_all(engine, {0: [(i, p, params) for i, p in enumerate(prompts)]})
    for i, prompt in enumerate(prompts):
        [alone] = generate(model, [prompt], params, {STOP})
        assert outputs[i].token_ids == alone.token_ids
        assert outputs[i].logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_fail_all_ends_every_sequence_and_frees_every_slot():
    engine = Engine(tiny("transformer"), set(), max_batch=2)
    seqs = [engine.add([5, 6, 7], SamplingParams(max_new_tokens=50)) for _ in range(3)]
    engine.step()  # two run, one waits
    events = engine.fail_all(RuntimeError("boom"))
    assert {e.seq.seq_id for e in events} == {s.seq_id for s in seqs} and all(e.finished for e in events)
    assert all(s.output.finish_reason == "error" and "boom" in s.error for s in seqs)
    assert engine.free_slots == [0, 1] and not engine.has_work()
