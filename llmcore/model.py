"""The generators: a decoder-only Transformer and an LSTM behind one interface.

    model = build_model(ModelConfig(arch="transformer", vocab_size=len(tok)))
    logits = model(idx)                                   # (B, T, V), training
    cache = model.new_cache(batch_size=1, max_len=256)    # KV cache or (h, c) state
    last = model.step(prompt_ids, cache)                  # (B, V), prefill
    last = model.step(next_ids, cache)                    # (B, V), one token per row

`step` may also address a subset of cache rows (`rows`), and rows may hold sequences of different
lengths: that is what a batching engine needs. Cached decoding equals the full forward pass.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ARCHS = ("transformer", "lstm")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that builds a model; stored inside every checkpoint."""

    arch: str
    vocab_size: int
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    block_size: int = 256  # longest context the model sees (positions for the Transformer)
    dropout: float = 0.0  # default_config sets 0.1: ten minutes of per-turn training see the dialogues ~8 times

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.arch == "transformer" and self.n_embd % self.n_head:
            raise ValueError("n_embd must be a multiple of n_head")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def default_config(arch: str, vocab_size: int) -> ModelConfig:
    """Sizes that train usefully on 2 CPU cores in minutes (see docs/benchmarks.md)."""
    if arch == "lstm":
        return ModelConfig(arch="lstm", vocab_size=vocab_size, n_layer=2, n_embd=384, n_head=1, dropout=0.1)
    return ModelConfig(arch="transformer", vocab_size=vocab_size, n_layer=4, n_embd=192, n_head=4, dropout=0.1)


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks cuda when present, cpu otherwise."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return device


@dataclass
class KVCache:
    """Keys and values per layer, preallocated: (L, B, H, T_max, D).

    `lengths` (B,) counts the filled positions; it lives on the CPU so that scheduling never waits for the GPU.
    """

    k: Tensor
    v: Tensor
    lengths: Tensor

    def reset(self, row: int) -> None:
        """Make a slot empty for a new sequence (stale keys are masked out by the length)."""
        self.lengths[row] = 0


@dataclass
class LSTMState:
    """(h, c) per layer: (L, B, H); `lengths` (B,) counts tokens consumed (on the CPU, as for KVCache)."""

    h: Tensor
    c: Tensor
    lengths: Tensor

    def reset(self, row: int) -> None:
        """Make a slot empty for a new sequence: the state must start from zero again."""
        self.h[:, row].zero_()
        self.c[:, row].zero_()
        self.lengths[row] = 0


def with_rows(cache: KVCache | LSTMState, rows: int) -> KVCache | LSTMState:
    """A copy of `cache` with `rows` slots: the old ones first, as they were, then empty ones (a cache grows as more
    sequences run at once, so that a large max_batch costs memory only when it is used)."""
    grown = {}
    for name, old in ((f.name, getattr(cache, f.name)) for f in fields(cache)):
        dim = 0 if name == "lengths" else 1  # state tensors are (layers, slots, ...)
        shape = list(old.shape)
        shape[dim] = rows
        grown[name] = old.new_zeros(shape)
        kept = min(rows, old.shape[dim])
        grown[name].narrow(dim, 0, kept).copy_(old.narrow(dim, 0, kept))
    return type(cache)(**grown)


@dataclass
class CachePositions:
    """Where one cached step reads and writes, computed once per step and shared by every layer."""

    pos: Tensor  # (B, T) absolute positions of the new tokens
    write_rows: Tensor  # (B, T) cache row of each new token
    rows: Tensor | None  # (B,) cache rows addressed, None for rows 0..B-1
    t_used: int  # positions to read: max(start) + T
    visible: Tensor  # (B, 1, T, t_used) causal mask over the cached positions, additive (0 / -inf): faster than a boolean one on CPU


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        # cfg.dropout acts on the residual branches only: dropout on the attention weights drew a random mask over
        # every (B, H, T, T) score and kept SDPA off its fused kernel, a third of a CPU training step (1.5x the tokens/s
        # without it, docs/benchmarks.md)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)

    def _merge(self, y: Tensor) -> Tensor:
        B, H, T, D = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, H * D))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # no dropout on attention weights: see __init__
        return self._merge(y)

    def forward_cached(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, where: CachePositions) -> Tensor:
        """x (B, T, C); the new keys and values go into the caches (B_max, H, T_max, D) in place."""
        q, k, v = self._heads(x)
        k_cache[where.write_rows, :, where.pos] = k.transpose(1, 2).to(k_cache.dtype)  # (B, T, H, D) into the slots
        v_cache[where.write_rows, :, where.pos] = v.transpose(1, 2).to(v_cache.dtype)
        if where.rows is None:
            keys, values = k_cache[: x.shape[0], :, : where.t_used], v_cache[: x.shape[0], :, : where.t_used]
        else:
            keys, values = k_cache[where.rows, :, : where.t_used], v_cache[where.rows, :, : where.t_used]  # (B, H, t_used, D)
        y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=where.visible.to(q.dtype))
        return self._merge(y)

    def forward_fresh(self, x: Tensor, real: Tensor, k_cache: Tensor, v_cache: Tensor, rows: Tensor) -> Tensor:
        """Prompts into empty cache rows. x (N, C) holds only the real tokens, `real` (B, T) where they sit in the
        right-padded rows: projections run on the N tokens, attention causally over the padded rows (no real token
        sees a pad, so no mask is needed); the keys of pads go into the cache beyond the rows' lengths."""
        B, T = real.shape
        C = x.shape[1]
        qkv = x.new_zeros(B, T, 3 * C)
        qkv[real] = self.qkv(x)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, H, T, D)
        k_cache[rows, :, :T] = k.to(k_cache.dtype)
        v_cache[rows, :, :T] = v.to(v_cache.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)[real])  # (N, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, where: CachePositions) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), k_cache, v_cache, where)
        return x + self.mlp(self.ln_2(x))

    def forward_fresh(self, x: Tensor, real: Tensor, k_cache: Tensor, v_cache: Tensor, rows: Tensor) -> Tensor:
        x = x + self.attn.forward_fresh(self.ln_1(x), real, k_cache, v_cache, rows)
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """What the trainer, sampler and engine rely on: forward, new_cache, step."""

    config: ModelConfig

    def forward(self, idx: Tensor, targets: Tensor | None = None, ignore_index: int = -100,
                label_smoothing: float = 0.0) -> Tensor:
        """Logits for every position: (B, T) -> (B, T, V); with targets, the training loss instead (so that a
        DistributedDataParallel wrapper, which hooks forward, sees the loss computation)."""
        if targets is not None:
            return self.loss(idx, targets, ignore_index, label_smoothing=label_smoothing)
        return self.head(self.hidden_states(idx))

    def loss(self, idx: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean",
             label_smoothing: float = 0.0) -> Tensor:
        """Cross-entropy over the positions that have a target; the output layer runs on those only. Label
        smoothing (training only) spreads that share of each target's probability over the whole vocabulary."""
        hidden = self.hidden_states(idx)  # (B, T, C)
        keep = targets != ignore_index
        logits = self.head(hidden[keep])  # (N, V)
        return F.cross_entropy(logits.float(), targets[keep], reduction=reduction, label_smoothing=label_smoothing)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    pads_safely = False  # may rows of different lengths be prefilled together, padded on the right?

    def step(self, idx: Tensor, cache, rows: Tensor | None = None, all_logits: bool = False,
             lengths: Tensor | None = None) -> Tensor:
        """Feed idx (B, T) after what the cache rows hold (`rows`, or the first B rows); logits for the last
        position (B, V) or for all (B, T, V).

        With `lengths` (B,) on the CPU, row i holds only its first lengths[i] tokens and is padded after them
        (models with `pads_safely` only): the logits are those of each row's last real token.
        """
        index = rows.cpu() if rows is not None else slice(0, idx.shape[0])
        start = cache.lengths[index]  # (B,) on the CPU
        if start.shape[0] != idx.shape[0]:
            raise ValueError(f"{idx.shape[0]} input rows for {start.shape[0]} cache rows")
        if lengths is not None and not self.pads_safely:
            raise ValueError(f"{type(self).__name__} cannot prefill padded rows")
        if lengths is not None:
            last = self._prefill_cached(idx, cache, start, rows, lengths)  # (B, C)
            cache.lengths[index] = start + lengths
            return self.head(last)
        hidden = self._hidden_cached(idx, cache, start, rows)  # (B, T, C)
        cache.lengths[index] = start + idx.shape[1]
        return self.head(hidden if all_logits else hidden[:, -1])

    def _prefill_cached(self, idx: Tensor, cache, start: Tensor, rows: Tensor | None, lengths: Tensor) -> Tensor:
        """The hidden state (B, C) of each padded row's last real token."""
        hidden = self._hidden_cached(idx, cache, start, rows)
        return hidden[torch.arange(idx.shape[0], device=idx.device), (lengths - 1).to(idx.device)]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class TransformerLM(LanguageModel):
    """Decoder-only, pre-LN, causal attention through scaled_dot_product_attention, tied embeddings."""

    pads_safely = True  # keys written for padding lie beyond the row's length: masked, then overwritten

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by depth
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def hidden_states(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype: torch.dtype | None = None) -> KVCache:
        cfg = self.config
        max_len = min(max_len or cfg.block_size, cfg.block_size)
        device = device or self.wte.weight.device
        dtype = dtype or self.wte.weight.dtype
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            lengths=torch.zeros(batch_size, dtype=torch.long),
        )

    def _prefill_cached(self, idx: Tensor, cache: KVCache, start: Tensor, rows: Tensor | None, lengths: Tensor) -> Tensor:
        """Prompts into empty rows (a fresh sequence's whole prompt, the engine's prefill) run packed: the layers
        see only the real tokens, not the padding, and attention needs no mask. Anything else takes the padded path."""
        if bool(start.any()) or idx.shape[1] > cache.k.shape[3]:
            return super()._prefill_cached(idx, cache, start, rows, lengths)
        B, T = idx.shape
        device = idx.device
        real = (torch.arange(T)[None, :] < lengths[:, None]).to(device)  # (B, T)
        x = self.wte(idx[real]) + self.wpe(torch.arange(T, device=device).expand(B, T)[real])  # (N, C)
        row_ids = torch.arange(B, device=device) if rows is None else rows.to(device)
        for layer, block in enumerate(self.blocks):
            x = block.forward_fresh(x, real, cache.k[layer], cache.v[layer], row_ids)
        return self.ln_f(x[(lengths.cumsum(0) - 1).to(device)])  # each row's last real token

    def _hidden_cached(self, idx: Tensor, cache: KVCache, start: Tensor, rows: Tensor | None) -> Tensor:
        B, T = idx.shape
        t_used = int(start.max()) + T  # start lives on the CPU: no device sync
        if t_used > cache.k.shape[3]:
            raise ValueError(f"context full: {t_used} tokens exceed the cache of {cache.k.shape[3]}")
        device = idx.device
        pos = (start[:, None] + torch.arange(T)[None, :]).to(device, non_blocking=True)  # (B, T)
        row_ids = torch.arange(B, device=device) if rows is None else rows.to(device, non_blocking=True)
        where = CachePositions(
            pos=pos,
            write_rows=row_ids[:, None].expand(B, T),
            rows=None if rows is None else row_ids,
            t_used=t_used,
            visible=torch.zeros((B, 1, T, t_used), device=device, dtype=self.wte.weight.dtype).masked_fill_(
                (torch.arange(t_used, device=device)[None, None, :] > pos[:, :, None])[:, None], float("-inf")),
        )
        x = self.wte(idx) + self.wpe(pos)
        for layer, block in enumerate(self.blocks):
            x = block.forward_cached(x, cache.k[layer], cache.v[layer], where)
        return self.ln_f(x)


class LSTMLM(LanguageModel):
    """Embedding -> stacked LSTM -> tied output layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, std=0.02)

    def hidden_states(self, idx: Tensor) -> Tensor:
        x = self.drop(self.wte(idx))  # (B, T, C)
        out, _ = self.lstm(x)
        return self.ln_f(self.drop(out))

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype: torch.dtype | None = None) -> LSTMState:
        cfg = self.config
        device = device or self.wte.weight.device
        dtype = dtype or self.wte.weight.dtype
        shape = (cfg.n_layer, batch_size, cfg.n_embd)
        return LSTMState(
            h=torch.zeros(shape, device=device, dtype=dtype),
            c=torch.zeros(shape, device=device, dtype=dtype),
            lengths=torch.zeros(batch_size, dtype=torch.long),
        )

    def _hidden_cached(self, idx: Tensor, cache: LSTMState, start: Tensor, rows: Tensor | None) -> Tensor:
        index = slice(0, idx.shape[0]) if rows is None else rows.to(idx.device)
        state = (cache.h[:, index].contiguous(), cache.c[:, index].contiguous())
        out, (h, c) = self.lstm(self.wte(idx), state)
        cache.h[:, index] = h
        cache.c[:, index] = c
        return self.ln_f(out)


def build_model(cfg: ModelConfig) -> LanguageModel:
    return TransformerLM(cfg) if cfg.arch == "transformer" else LSTMLM(cfg)
