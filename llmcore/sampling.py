"""Choosing the next token, and a simple cached generation loop over a few prompts.

    params = SamplingParams(temperature=0.0, max_new_tokens=64)   # greedy
    [out] = generate(model, [prompt_ids], params, stop_ids=tok.stop_ids)
    tok.decode(out.token_ids), out.finish_reason, out.confidence

Temperature 0 is greedy and deterministic. With a temperature, a `seed` makes the draw reproducible.
The repetition penalty (CTRL-style: positive logits divided, negative ones multiplied) applies to the
tokens this answer has already produced, not to the prompt: an answer may repeat the question's words.
The serving engine batches requests itself and reuses `choose_tokens` from here.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional as F

from llmcore.model import LanguageModel


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None

    def __post_init__(self) -> None:
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
        return self.temperature == 0 or self.top_k == 1

    def make_generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # of each chosen token under the model (before sampling filters)
    finish_reason: str | None = None  # "stop" | "length"

    @property
    def confidence(self) -> float:
        """Mean token log-probability of the answer; 0 is certain, more negative is less sure."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")


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


def choose_token(logits: Tensor, params: SamplingParams, previous: Sequence[int], generator: torch.Generator | None) -> int:
    """One next token for one sequence from its logits (V,)."""
    logits = penalize_repeats(logits.float(), previous, params.repetition_penalty)
    if params.is_greedy:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


def choose_tokens(logits: Tensor, params: Sequence[SamplingParams], outputs: Sequence[Generation],
                  generators: Sequence[torch.Generator | None]) -> tuple[list[int], list[float]]:
    """Next tokens for a batch, logits (B, V), each row with its own parameters; also their log-probabilities."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    if all(p.is_greedy and p.repetition_penalty == 1.0 for p in params):
        tokens = torch.argmax(logits, dim=-1).tolist()
    else:
        tokens = [choose_token(logits[i], p, o.token_ids, g) for i, (p, o, g) in enumerate(zip(params, outputs, generators))]
    chosen = logprobs[torch.arange(len(tokens), device=logits.device), torch.tensor(tokens, device=logits.device)]
    return tokens, chosen.tolist()


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
    logits = torch.stack([model.step(torch.tensor([p], device=device), cache, rows=torch.tensor([i]))[0]
                          for i, p in enumerate(prompts)])  # (B, V), prefill one row at a time
    outputs = [Generation() for _ in prompts]
    generators = [params.make_generator(device) for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        tokens, logprobs = choose_tokens(logits, [params] * len(active), [outputs[i] for i in active],
                                         [generators[i] for i in active])
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
