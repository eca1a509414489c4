"""Sampling: greedy is deterministic, seeds reproduce draws, filters and stop conditions hold."""
import random

import numpy as np
import pytest
import torch

from llmcore.model import ModelConfig, build_model
from llmcore.sampling import (
    CANDIDATES,
    Sampler,
    SamplingParams,
    choose_token,
    filter_top_k_top_p,
    generate,
    kept_candidates,
    penalize_repeats,
    uniforms,
)

STOP = 7


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model(ModelConfig(arch="transformer", vocab_size=40, n_layer=1, n_embd=32, n_head=2, block_size=64)).eval()


def test_temperature_zero_is_deterministic_and_greedy(model):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    a = generate(model, [[1, 2, 3]], params, stop_ids={STOP})[0]
    b = generate(model, [[1, 2, 3]], params, stop_ids={STOP})[0]
    assert a.token_ids == b.token_ids
    logits = model(torch.tensor([[1, 2, 3]]))[0, -1]
    assert a.token_ids[0] == int(logits.argmax()) or a.finish_reason == "stop"


def test_seed_makes_sampling_reproducible_and_different_seeds_differ(model):
    runs = {seed: generate(model, [[1, 2]], SamplingParams(temperature=1.5, max_new_tokens=20, seed=seed), {STOP})[0].token_ids
            for seed in (1, 2, 3)}
    again = generate(model, [[1, 2]], SamplingParams(temperature=1.5, max_new_tokens=20, seed=1), {STOP})[0].token_ids
    assert again == runs[1]
    assert len({tuple(v) for v in runs.values()}) > 1


def test_max_new_tokens_is_respected(model):
    out = generate(model, [[1, 2, 3]], SamplingParams(temperature=1.0, max_new_tokens=5, seed=0), stop_ids=set())[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_generation_stops_at_end_of_turn_without_emitting_it(model):
    logits = model(torch.tensor([[1, 2, 3]]))[0, -1]
    first = int(logits.argmax())
    out = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=10), stop_ids={first})[0]
    assert out.token_ids == [] and out.finish_reason == "stop"


def test_context_full_ends_with_length(model):
    out = generate(model, [list(range(1, 30)) * 2], SamplingParams(max_new_tokens=50, temperature=1.0, seed=0), stop_ids=set())[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 64 - 58 + 1  # the last token is predicted, never fed


def test_batched_greedy_equals_one_at_a_time(model):
    prompts = [[1, 2, 3], [5], [9, 8, 7, 6, 5, 4, 3, 2], [11, 12]]
    params = SamplingParams(max_new_tokens=15)
    together = generate(model, prompts, params, stop_ids={STOP})
    alone = [generate(model, [p], params, stop_ids={STOP})[0] for p in prompts]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    for a, b in zip(together, alone):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.confidence <= 0


def test_top_k_keeps_k_tokens_and_top_p_keeps_the_smallest_set():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isfinite(filter_top_k_top_p(logits, 2, 1.0)).sum() == 2
    probs = torch.softmax(logits, -1)  # ≈ [0.64, 0.24, 0.09, ...]
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, 0.7))
    assert kept.tolist() == [True, True, False, False, False]
    assert probs[:1].sum() < 0.7 <= probs[:2].sum()


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(50)
    for params in (SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0, top_p=1e-6, seed=3)):
        assert choose_token(logits, params, [], params.random_key()) == int(logits.argmax())


def test_a_top_p_at_the_edges_of_float32_neither_fails_the_batch_nor_draws_garbage():
    """The sampler holds top_p in float32: 0.99999999 is 1 there (a row judged "filtered" on the float64 value took the
    nucleus path with no nucleus to find and failed the step of every row in the batch), and 1e-46 is 0 (every token
    was filtered out: a NaN distribution, the last candidate drawn). The first samples as top_p 1, the second is greedy."""
    torch.manual_seed(5)
    vocab = 64
    params = [SamplingParams(temperature=0.8, top_p=0.99999999, seed=1), SamplingParams(temperature=0.8, top_p=0.9, seed=2),
              SamplingParams(temperature=1.0, top_p=1e-46, seed=3), SamplingParams(temperature=0.8, seed=1)]
    sampler = Sampler(len(params), vocab, max_tokens=8)
    keys = [None if p.is_greedy else p.random_key() for p in params]
    for slot, (p, key) in enumerate(zip(params, keys)):
        sampler.assign(slot, p, key)
    produced: list[list[int]] = [[] for _ in params]
    for _ in range(6):
        logits = torch.randn(len(params), vocab) * 3
        logits[3] = logits[0]
        tokens, _ = sampler.sample(logits, list(range(len(params))))
        assert tokens == [choose_token(logits[i], p, produced[i], keys[i]) for i, p in enumerate(params)]
        assert tokens[2] == int(logits[2].argmax())
        for row, token in zip(produced, tokens):
            row.append(token)
    assert produced[0] == produced[3]  # the same seed: as top_p 1
    assert params[0].top_p == 1.0 and not params[0].is_greedy and params[2].is_greedy
    alone = Sampler(2, vocab, max_tokens=8)  # the only sampled row of its batch: before, the step raised
    alone.assign(0, params[0], keys[0])
    alone.assign(1, SamplingParams(), None)
    logits = torch.randn(2, vocab)
    assert alone.sample(logits, [0, 1])[0] == [choose_token(logits[0], params[0], [], keys[0]), int(logits[1].argmax())]


def test_a_vanishing_temperature_is_greedy_not_nan(model):
    """1e-46 is 0 in float32: dividing the logits by it gave inf, a NaN softmax and the last token id at every step."""
    greedy = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=12), {STOP})[0].token_ids
    for temperature in (1e-46, 1e-7):
        params = SamplingParams(temperature=temperature, seed=5, max_new_tokens=12)
        assert params.is_greedy and generate(model, [[1, 2, 3]], params, {STOP})[0].token_ids == greedy


def test_repetition_penalty_lowers_repeated_tokens():
    logits = torch.tensor([2.0, -1.0, 1.9])
    penalised = penalize_repeats(logits, [0, 1], 1.5)
    assert penalised.tolist() == pytest.approx([2.0 / 1.5, -1.5, 1.9])
    assert choose_token(logits, SamplingParams(repetition_penalty=1.5), [0], None) == 2


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_new_tokens=0),
                                 dict(top_k=-1), dict(repetition_penalty=0)])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def random_params(rng: random.Random, i: int, top_ks=(0, 1, 5, 40)) -> SamplingParams:
    kind = i % 4
    if kind == 0:
        return SamplingParams()
    if kind == 1:
        return SamplingParams(repetition_penalty=rng.choice([1.2, 1.5]))
    return SamplingParams(temperature=rng.choice([0.5, 0.8, 1.3]), top_k=rng.choice(top_ks),
                          top_p=rng.choice([1.0, 0.9, 0.5]), repetition_penalty=rng.choice([1.0, 1.2]),
                          seed=rng.randrange(1000) if kind == 2 else None)


@pytest.mark.parametrize("top_ks", [(0, 1, 5, 40), (0,)], ids=["top-k and top-p", "top-p alone"])
def test_batched_sampler_chooses_what_the_per_row_reference_chooses(top_ks):
    """32 rows of mixed greedy, penalised and sampled (top-k, top-p, seeds) requests over 12 steps: every token
    equals the per-row reference's with the same random key; log-probabilities are the model's."""
    rng, vocab, rows = random.Random(7), 100, 32
    torch.manual_seed(3)
    params = [random_params(rng, i, top_ks) for i in range(rows)]
    keys = [None if p.is_greedy else p.random_key() for p in params]  # unseeded: a fresh key each
    sampler = Sampler(rows + 8, vocab, max_tokens=16)
    slots = rng.sample(range(rows + 8), rows)  # any slots, in any order
    for slot, p, key in zip(slots, params, keys):
        sampler.assign(slot, p, key)
    produced: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(12):
        logits = torch.randn(rows, vocab) * 3
        logits[:, :10] += 4  # a few likely tokens, so that the penalty has repeats to act on
        tokens, logprobs = sampler.sample(logits, slots)
        expected = [choose_token(logits[i], params[i], produced[i], keys[i]) for i in range(rows)]
        assert tokens == expected
        assert logprobs == pytest.approx(torch.log_softmax(logits, -1)[torch.arange(rows), torch.tensor(tokens)].tolist(), abs=1e-5)
        for row, token in zip(produced, tokens):
            row.append(token)
    assert any(len(set(row)) < len(row) for row in produced)  # repeats happened, so the penalty was exercised
    assert sampler.counts[slots[0]] == 12
    assert len({tuple(produced[i]) for i in range(rows) if not params[i].is_greedy}) > 1


def test_batched_filters_keep_what_the_reference_keeps():
    """Rows within the CANDIDATES best tokens and rows beyond them (a large k, a flat distribution's wide
    nucleus) keep exactly the reference's tokens."""
    torch.manual_seed(0)
    vocab = 300
    logits = torch.randn(8, vocab) * 4
    logits[2, :5] = 30.0  # ties at the k-th value are kept, as in the reference
    logits[7] = torch.randn(vocab) * 0.01  # nearly flat: the 0.9 nucleus holds most of the vocabulary
    top_k = torch.tensor([vocab, 3, 4, 1, vocab, 10, 200, vocab])
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.6, 0.8, 1.0, 0.9])
    kept = torch.zeros_like(logits, dtype=torch.bool)
    for rows, values, order in kept_candidates(logits, top_k, top_p):
        kept[rows[:, None], order] = torch.isfinite(values)
    for row in range(8):
        k = int(top_k[row])
        reference = filter_top_k_top_p(logits[row], 0 if k == vocab else k, float(top_p[row]))
        assert torch.equal(kept[row], torch.isfinite(reference)), row
    assert kept[0].all() and kept[2].sum() == 5 and kept[6].sum() == 200 and kept[7].sum() > CANDIDATES[0]
    nucleus_only = torch.tensor([0.6, 0.8, 0.9, 0.5, 0.99, 0.95, 0.3, 0.9])  # the usual request: a top-p, no top-k
    kept = torch.zeros_like(logits, dtype=torch.bool)
    for rows, values, order in kept_candidates(logits, torch.full((8,), vocab), nucleus_only):
        kept[rows[:, None], order] = torch.isfinite(values)
    for row in range(8):
        assert torch.equal(kept[row], torch.isfinite(filter_top_k_top_p(logits[row], 0, float(nucleus_only[row])))), row
    assert kept[7].sum() > CANDIDATES[1]  # the flat row needed the sort


def test_a_slot_that_changes_hands_is_sampled_with_its_new_sequence_parameters():
    """The sampler reuses a batch's index tensors while its slots stay the same; a new sequence in one of those
    slots is still sampled with its own parameters and starts with nothing produced."""
    sampler = Sampler(4, 10, max_tokens=8)
    logits = torch.zeros(2, 10)
    logits[:, 4], logits[:, 5] = 5.0, 4.0
    for slot in (0, 1):
        sampler.assign(slot, SamplingParams(), None)
    assert sampler.sample(logits, [0, 1])[0] == [4, 4]
    assert sampler.sample(logits, [0, 1])[0] == [4, 4]
    sampler.assign(1, SamplingParams(repetition_penalty=50.0), None)  # the same slots next step, a new sequence in 1
    assert sampler.sample(logits, [0, 1])[0] == [4, 4]  # it has produced nothing yet: no penalty
    assert sampler.sample(logits, [0, 1])[0] == [4, 5]  # its own 4 now counts: 5 / 50 < 4
    params = SamplingParams(temperature=1.0, top_k=2, seed=3)
    sampler.assign(0, params, params.random_key())
    draws = [sampler.sample(logits, [0, 1])[0][0] for _ in range(12)]
    assert draws == [choose_token(logits[0], params, draws[:i], params.random_key()) for i in range(12)]
    assert set(draws) == {4, 5}  # sampled, not greedy


def test_random_numbers_depend_on_the_key_and_the_token_index_alone():
    """A sampled row's number is the n-th of its key's stream: the same alone as in any batch, uniform in [0, 1),
    different for different seeds; a seed always gives the same key, no seed a fresh one."""
    keys = np.array([SamplingParams(temperature=1.0, seed=s).random_key() for s in range(200)], dtype=np.uint64)
    counters = np.arange(200) % 9
    batch = uniforms(keys, counters)
    assert all(uniforms(keys[i : i + 1], counters[i : i + 1])[0] == batch[i] for i in range(200))
    assert uniforms(keys[::-1], counters[::-1]).tolist() == batch[::-1].tolist()  # order in the batch does not matter
    assert len(set(batch.tolist())) == 200
    stream = uniforms(np.repeat(keys[:20], 500), np.tile(np.arange(500), 20))
    assert ((stream >= 0) & (stream < 1)).all()
    deciles = np.histogram(stream, bins=10, range=(0, 1))[0]
    assert deciles.min() > 850 and deciles.max() < 1150  # 1,000 expected in each; ±15 % is > 4 standard deviations
    assert SamplingParams(temperature=1.0, seed=7).random_key() == SamplingParams(temperature=0.5, seed=7).random_key()
    assert SamplingParams(temperature=1.0, seed=-7).random_key() != SamplingParams(temperature=1.0, seed=7).random_key()
    assert SamplingParams(temperature=1.0).random_key() != SamplingParams(temperature=1.0).random_key()
