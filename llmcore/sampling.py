"""Choosing the next token, and a simple cached generation loop over a few prompts.

    params = SamplingParams(temperature=0.0, max_new_tokens=64)   # greedy
    [out] = generate(model, [prompt_ids], params, stop_ids=tok.stop_ids)
    tok.decode(out.token_ids), out.finish_reason, out.confidence

Temperature 0 is greedy and deterministic. With a temperature, a `seed` makes the draw reproducible.
The repetition penalty (CTRL-style: positive logits divided, negative ones multiplied) applies to the
tokens this answer has already produced, not to the prompt: an answer may repeat the question's words.
`Sampler` chooses a whole batch's tokens at once (the engine and `generate` use it); `choose_token` is
the per-row reference it must agree with.
"""
from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llmcore.model import LanguageModel

MIN_TEMPERATURE = 1e-5  # as vLLM: lower is greedy
# A nucleus this small holds the best token alone (its probability is at least 1/V, over 1e-6 for any vocabulary under a
# million): greedy. Below it float32 rounds a top_p such as 1e-46 to 0, and the filter dropped every token (NaN).
MIN_TOP_P = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.top_p < 1 and np.float32(self.top_p) == 1:
            # the sampler holds top_p in float32, where 0.99999999 is 1: judged "filtered" on the float64 value, such a
            # row went down the nucleus path with no nucleus to find, which failed the step of every request in the batch
            object.__setattr__(self, "top_p", 1.0)
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")

    @property
    def is_greedy(self) -> bool:
        """Temperature 0 (or below MIN_TEMPERATURE: 1e-46 is 0 in float32, and dividing by it gave NaN), top-k 1, or a
        nucleus under MIN_TOP_P (the best token alone)."""
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1 or self.top_p < MIN_TOP_P

    def random_key(self) -> int:
        """The key of a sampled sequence's random numbers (`uniforms`): from its seed, or fresh without one."""
        return int(_mix(np.array([self.seed % 2**64], dtype=np.uint64))[0]) if self.seed is not None else secrets.randbits(64)


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # of each chosen token under the model (before sampling filters)
    finish_reason: str | None = None  # "stop" | "length"

    @property
    def confidence(self) -> float:
        """Mean token log-probability of the answer; 0 is certain, more negative is less sure."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")


# --- random numbers: counter-based, so a sequence's draws do not depend on its batch ---

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over uint64 values (a bijection that scatters nearby inputs across all 64 bits)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """One uniform number in [0, 1) per row: the `counters[i]`-th number of the stream `keys[i]` (SplitMix64: the
    n-th output is the finaliser of key + (n + 1) × the golden ratio). A sequence's n-th draw depends on its key
    and n alone, so a seeded request gives the same text alone and in any batch, and a batch gets all its numbers
    in a few vectorised operations (a torch.Generator per row cost ~10 µs of Python each, every step)."""
    keys, counters = np.asarray(keys, dtype=np.uint64), np.asarray(counters).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(keys + (counters + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


# --- the per-row reference: one sequence's logits (V,) at a time; the Sampler below must choose the same ---

def penalize_repeats(logits: Tensor, previous: Sequence[int], penalty: float) -> Tensor:
    """logits (V,): make already produced tokens less likely."""
    if penalty == 1.0 or not previous:
        return logits
    idx = torch.tensor(sorted(set(previous)), device=logits.device)
    seen = logits[idx]
    logits = logits.clone()
    logits[idx] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filter_top_k_top_p(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """logits (V,): -inf outside the top-k and outside the smallest set reaching probability top_p."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def choose_token(logits: Tensor, params: SamplingParams, previous: Sequence[int], key: int | None) -> int:
    """One next token for one sequence from its logits (V,). A sampled token is drawn by inverse transform:
    one uniform number, `uniforms(key, len(previous))`, looked up in the cumulative distribution; the number
    depends on the sequence's key and the token's index alone, so a seeded request does not depend on its batch."""
    logits = penalize_repeats(logits.float(), previous, params.repetition_penalty)
    if params.is_greedy:
        return int(torch.max(logits, dim=-1).indices)  # the first of equal bests, as argmax; faster on a CPU
    probs = torch.softmax(filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p), dim=-1)
    u = torch.from_numpy(uniforms(np.array([key], dtype=np.uint64), np.array([len(previous)]))).to(logits.device)
    if not (0 < params.top_k < logits.shape[-1] or params.top_p < 1.0):
        return int(_inverse_cdf(probs[None], u)[0])  # in vocabulary order
    probs, order = torch.sort(probs, descending=True)  # a filtered draw looks its tokens up best first
    return int(order[_inverse_cdf(probs[None], u)[0]])


# --- the batched sampler -------------------------------------------------------------------------------

CANDIDATES = (16, 128, 512)  # a filtered draw looks among this many best tokens first, then this many; then sorts


@dataclass
class _Layout:
    """A batch's slots as index tensors and the rows' fixed parameters, built once and reused while the batch
    keeps the same slots in the same order (most steps) and no slot changes hands."""

    key: tuple[int, ...]
    slots: np.ndarray  # (B,) on the host
    rows: Tensor  # (B,) the same slots on the device
    penalised: np.ndarray  # (B,) rows with a repetition penalty
    penalty: Tensor  # (B, 1)
    sampled: Tensor | None  # indices of the sampled rows (None: all greedy)
    sampled_at: np.ndarray  # the same indices on the host
    keys: np.ndarray  # (S,) uint64: the sampled rows' random keys
    temperature: Tensor | None  # (S, 1) of the sampled rows
    plain: Tensor | None  # indices among the sampled rows of those without top-k/top-p (None: none)
    filtered: Tensor | None  # ... and of those with top-k or top-p (None: none)
    top_k: Tensor | None  # of the filtered rows
    top_p: Tensor | None


class Sampler:
    """Next tokens for a whole batch in tensor operations (as vLLM's Sampler): each cache slot keeps its
    request's parameters as rows of small tensors and the tokens its answer produced (for the repetition
    penalty, applied by gather/scatter on those tokens only); a step penalises, takes the greedy rows'
    argmax and draws the sampled rows' tokens (temperature, top-k, top-p) together, and hands tokens and
    log-probabilities to the host in one transfer.

        sampler = Sampler(slots=32, vocab_size=V, max_tokens=256, device=device)
        sampler.assign(slot, params, key)                        # when a sequence takes a slot (key: params.random_key())
        tokens, logprobs = sampler.sample(logits, [slot, ...])   # logits (B, V), one row per slot listed
        sampler.rows, sampler.chosen                             # the step's slots and tokens, on the device

    A sampled row's uniform number is the n-th of its sequence's own stream (`uniforms`: its key and the index
    of the token), so a seeded request gives the same text alone and in any batch. Per-step host work does not
    grow with the batch beyond a few vectorised numpy operations: the index tensors of a batch are built once
    and reused while its slots stay the same.
    """

    def __init__(self, slots: int, vocab_size: int, max_tokens: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        self.temperature = torch.ones(slots, device=self.device)
        self.top_k = torch.full((slots,), vocab_size, dtype=torch.long, device=self.device)
        self.top_p = torch.ones(slots, device=self.device)
        self.penalty = torch.ones(slots, device=self.device)
        self.produced = torch.zeros((slots, max_tokens), dtype=torch.long, device=self.device)  # past a row's count: its first token
        self.counts = np.zeros(slots, dtype=np.int64)  # tokens produced per slot, on the host: scheduling never waits for the device
        self.is_sampled = np.zeros(slots, dtype=bool)
        self.is_filtered = np.zeros(slots, dtype=bool)  # sampled with top-k or top-p
        self.is_penalised = np.zeros(slots, dtype=bool)
        self.keys = np.zeros(slots, dtype=np.uint64)  # each sampled slot's random key
        self.rows = torch.zeros(0, dtype=torch.long, device=self.device)
        self.chosen = torch.zeros(0, dtype=torch.long, device=self.device)
        self._layout: _Layout | None = None

    def assign(self, slot: int, params: SamplingParams, key: int | None) -> None:
        """A new sequence in `slot`: its parameters, its random key (sampled rows: params.random_key()), nothing
        produced yet."""
        if key is None and not params.is_greedy:
            raise ValueError("a sampled sequence needs a random key")
        self.keys[slot], self.counts[slot] = key or 0, 0
        self.is_sampled[slot] = not params.is_greedy
        self.is_filtered[slot] = not params.is_greedy and (0 < params.top_k < self.vocab_size or params.top_p < 1.0)
        self.is_penalised[slot] = params.repetition_penalty != 1.0
        self.temperature[slot] = params.temperature if not params.is_greedy else 1.0
        self.top_k[slot] = params.top_k if 0 < params.top_k < self.vocab_size else self.vocab_size
        self.top_p[slot] = params.top_p
        self.penalty[slot] = params.repetition_penalty
        self._layout = None  # the slot changed hands: the next batch's parameters are read again

    def sample(self, logits: Tensor, slots: Sequence[int]) -> tuple[list[int], list[float]]:
        """logits (B, V) for the sequences in `slots` (in that order): their next tokens and the tokens'
        log-probabilities under the model (before penalty and filters)."""
        layout = self._layout_of(slots)
        raw = logits.float()
        counts = self.counts[layout.slots]
        x = self._penalise(raw, layout, counts) if (layout.penalised & (counts > 0)).any() else raw
        tokens = torch.max(x, dim=-1).indices  # argmax, ~3x faster on a CPU over (256, 2,048)
        if layout.sampled is not None:
            tokens[layout.sampled] = self._draw(x[layout.sampled], layout, counts[layout.sampled_at])
        chosen = torch.log_softmax(raw, dim=-1).gather(1, tokens[:, None]).squeeze(1)  # fused: faster than a logsumexp on CPU
        self._record(layout, counts, tokens)
        self.rows, self.chosen = layout.rows, tokens  # stay on the device: the engine's next decode input
        host = torch.stack([tokens, chosen.double().view(torch.int64)]).cpu().numpy()  # one device->host transfer per step
        return host[0].tolist(), host[1].view(np.float64).tolist()

    def _layout_of(self, slots: Sequence[int]) -> _Layout:
        key = tuple(slots)
        if self._layout is not None and self._layout.key == key:
            return self._layout
        at = np.asarray(key, dtype=np.int64)
        rows = torch.from_numpy(at).to(self.device)
        sampled = np.flatnonzero(self.is_sampled[at])
        filtered = self.is_filtered[at[sampled]]
        sampled_rows = rows[torch.from_numpy(sampled).to(self.device)]
        f_rows = sampled_rows[torch.from_numpy(np.flatnonzero(filtered)).to(self.device)]
        self._layout = _Layout(
            key=key, slots=at, rows=rows, penalised=self.is_penalised[at], penalty=self.penalty[rows][:, None],
            sampled=_indices(sampled, self.device), sampled_at=sampled, keys=self.keys[at[sampled]],
            temperature=self.temperature[sampled_rows][:, None] if len(sampled) else None,
            plain=_indices(np.flatnonzero(~filtered), self.device) if filtered.any() else None,
            filtered=_indices(np.flatnonzero(filtered), self.device), top_k=self.top_k[f_rows], top_p=self.top_p[f_rows])
        return self._layout

    def _record(self, layout: _Layout, counts: np.ndarray, tokens: Tensor) -> None:
        """Append each row's token to what its slot produced; a row's first token also fills the rest of its row."""
        if (first := np.flatnonzero(counts == 0)).size:
            at = _indices(first, self.device)
            self.produced[layout.rows[at]] = tokens[at, None]
        position = torch.from_numpy(np.minimum(counts, self.produced.shape[1] - 1)).to(self.device)
        self.produced[layout.rows, position] = tokens
        self.counts[layout.slots] = counts + 1

    def _penalise(self, x: Tensor, layout: _Layout, counts: np.ndarray) -> Tensor:
        """CTRL's penalty on the tokens each row produced, by gather/scatter on those tokens only (a new tensor; x
        is left as it was). Rows without a penalty or without tokens yet get a factor of 1, which leaves their
        values exactly as they were; positions past a row's count hold its first token, so duplicate writes
        carry the same value."""
        ids = self.produced[layout.rows, : min(int(counts.max()), self.produced.shape[1])]
        penalty = layout.penalty
        if not counts.all():
            penalty = torch.where(torch.from_numpy(counts > 0).to(self.device)[:, None], penalty, 1.0)
        seen = x.gather(1, ids)
        return x.scatter(1, ids, torch.where(seen > 0, seen / penalty, seen * penalty))

    def _draw(self, x: Tensor, layout: _Layout, counts: np.ndarray) -> Tensor:
        """The sampled rows' tokens from their (penalised) logits x (S, V); counts: the tokens each has produced."""
        x = x / layout.temperature
        u = torch.from_numpy(uniforms(layout.keys, counts)).to(self.device)
        if layout.filtered is None:
            return _inverse_cdf(torch.softmax(x, dim=-1), u)
        tokens = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        if layout.plain is not None:
            tokens[layout.plain] = _inverse_cdf(torch.softmax(x[layout.plain], dim=-1), u[layout.plain])
        chosen = layout.filtered
        for group, values, order in kept_candidates(x[chosen], layout.top_k, layout.top_p):
            tokens[chosen[group]] = order.gather(1, _inverse_cdf(torch.softmax(values, dim=-1), u[chosen[group]])[:, None]).squeeze(1)
        return tokens


def _indices(at: np.ndarray, device: torch.device) -> Tensor | None:
    """Row indices as a device tensor, None when there are none."""
    return torch.from_numpy(at).to(device) if at.size else None


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """probs (B, N), u (B,) uniform in [0, 1): the index each row's u falls on in its cumulative distribution."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def kept_candidates(x: Tensor, top_k: Tensor, top_p: Tensor):
    """filter_top_k_top_p for a batch x (B, V), each row with its own k (V: none) and p (1: none): yields
    (rows, values, order) per group of rows, `values` (n, W) the rows' W best logits best first with -inf where
    filtered out, `order` their token ids. Rows are first looked at among their best CANDIDATES[0] tokens (a
    top-k, ~10x cheaper than a sort on a CPU), those whose k or nucleus reaches further among CANDIDATES[1],
    the rest among all (a sort). A row's probabilities come from its normaliser, computed once over the whole
    row (over its top-k where it has one), so a look at W tokens costs O(W) beyond the top-k itself."""
    vocab = x.shape[-1]
    todo = torch.arange(x.shape[0], device=x.device)
    total = torch.logsumexp(x, dim=-1) if bool((top_p < 1.0).any()) else None
    only_p = not bool((top_k < vocab).any())  # every row has a top-p and none a top-k (the usual request): fewer steps
    for width in (*CANDIDATES, vocab):
        width = min(width, vocab)
        if only_p:
            values, order, done = _nucleus_among_best(_rows(x, todo), _rows(top_p, todo), width, _rows(total, todo))
        else:
            values, order, done = _filter_among_best(_rows(x, todo), _rows(top_k, todo), _rows(top_p, todo), width,
                                                     _rows(total, todo))
        if bool(done.any()):
            yield todo[done], values[done], order[done]
        todo = todo[~done]
        if not len(todo):
            return


def _rows(t: Tensor | None, rows: Tensor) -> Tensor | None:
    """t's `rows`; t itself (no copy) while they are all of its rows; None for None."""
    return t if t is None or len(rows) == t.shape[0] else t[rows]


def _nucleus_among_best(x: Tensor, top_p: Tensor, width: int, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """_filter_among_best for rows that all have a top-p and no top-k."""
    vocab = x.shape[-1]
    values, order = torch.topk(x, width, dim=-1) if width < vocab else torch.sort(x, dim=-1, descending=True)
    values, reached = _nucleus(values, total, top_p)
    return values, order, reached | (width == vocab)


def _nucleus(values: Tensor, norm: Tensor, top_p: Tensor) -> tuple[Tensor, Tensor]:
    """values (n, W), each row's best logits best first, and norm (n,) its log normaliser: -inf past each row's top-p
    nucleus (a row with top_p 1 keeps them all), and whether the nucleus ends within these W."""
    probs = torch.exp(values - norm[:, None])
    cumulative = probs.cumsum(-1)
    values = values.masked_fill((cumulative - probs >= top_p[:, None]) & (top_p < 1.0)[:, None], float("-inf"))
    return values, cumulative[:, -1] >= top_p


def _filter_among_best(x: Tensor, top_k: Tensor, top_p: Tensor, width: int,
                       total: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The rows' `width` best logits best first (-inf where filtered out), their token ids, and which rows were
    decided by those alone (their k is within them, and so is their nucleus). total: each row's logsumexp (None:
    no row has a top-p)."""
    vocab = x.shape[-1]
    values, order = torch.topk(x, width, dim=-1) if width < vocab else torch.sort(x, dim=-1, descending=True)
    kth = torch.where(top_k <= width, values.gather(1, (top_k.clamp(max=width) - 1)[:, None]).squeeze(1),
                      torch.full_like(top_p, float("-inf")))
    values = values.masked_fill(values < kth[:, None], float("-inf"))
    k_known = (top_k <= width) | (top_k >= vocab)  # the k-th best is among these, or there is no k
    done = top_k <= width  # rows without top-p: decided by their k alone
    if total is not None:
        norm = torch.where(top_k <= width, torch.logsumexp(values, dim=-1), total)  # over the top-k, else the row
        values, reached = _nucleus(values, norm, top_p)
        done = torch.where(top_p < 1.0, k_known & reached, done)
    return values, order, done | (width == vocab)


@torch.inference_mode()
def generate(model: LanguageModel, prompts: Sequence[Sequence[int]], params: SamplingParams,
             stop_ids: Collection[int]) -> list[Generation]:
    """Answer each prompt; rows stop at an end-of-turn id, at max_new_tokens, or when the context is full."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    block = model.config.block_size
    if max(map(len, prompts)) >= block:
        raise ValueError(f"a prompt of {max(map(len, prompts))} tokens leaves no room in the context of {block}")
    device = next(model.parameters()).device
    cache = model.new_cache(len(prompts), max_len=min(block, max(map(len, prompts)) + params.max_new_tokens))
    sampler = Sampler(len(prompts), model.config.vocab_size, params.max_new_tokens, device)
    for row in range(len(prompts)):
        sampler.assign(row, params, None if params.is_greedy else params.random_key())
    logits = torch.stack([model.step(torch.tensor([p], device=device), cache, rows=torch.tensor([i]))[0]
                          for i, p in enumerate(prompts)])  # (B, V), prefill one row at a time
    outputs = [Generation() for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        tokens, logprobs = sampler.sample(logits, active)
        still, lengths = [], cache.lengths.tolist()
        for row, token, logprob in zip(active, tokens, logprobs):
            out = outputs[row]
            if token in stop_ids:
                out.finish_reason = "stop"
                continue
            out.token_ids.append(token)
            out.logprobs.append(logprob)
            if len(out.token_ids) >= params.max_new_tokens or lengths[row] >= cache_capacity(cache):
                out.finish_reason = "length"
            else:
                still.append((row, token))
        active = [row for row, _ in still]
        if active:
            rows = torch.tensor(active)  # cache rows are addressed from the CPU
            logits = model.step(torch.tensor([[t] for _, t in still], device=device), cache, rows=rows)
    return outputs


def prompt_budget(block_size: int, max_new_tokens: int) -> int:
    """Tokens a prompt may take so the answer still fits the context (at least half the context)."""
    return max(block_size - max_new_tokens, block_size // 2)


def cache_capacity(cache) -> int:
    """Positions a cache can hold; an LSTM state has no limit of its own."""
    k = getattr(cache, "k", None)
    return k.shape[3] if k is not None else 1 << 30
