"""Benchmark: training tokens/s for both architectures at their default sizes, and generation tokens/s
at batch 1 with the cache vs without it (recomputing the whole prefix every token); training in fp32 and
in bf16 autocast side by side where the device computes bf16 natively (what `llmcore train` picks by default).

    .venv/bin/python bench/train.py [--data FILE] [--steps N] [--new-tokens N] [--device auto|cpu|cuda]

Prints one JSON object per measurement, then a summary object with the ratios. Everything is measured
side by side in one run, so ratios hold on a noisy shared machine even when absolute numbers drift.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from llmcore.chats import DEMO_DATA, read_conversations
from llmcore.dataset import IGNORE_INDEX, make_batches, make_turn_examples
from llmcore.model import ARCHS, LanguageModel, build_model, default_config, resolve_device
from llmcore.prompting import PromptRecipe
from llmcore.retrieval import EvidenceIndex
from llmcore.tokenizer import Tokenizer
from llmcore.train import autocast, make_optimizer, resolve_precision

CROSSWOZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "crosswoz_test.chat.jsonl"


def train_tokens_per_s(model: LanguageModel, batches: list, device: torch.device, steps: int, pad_id: int, precision: str) -> float:
    optimizer = make_optimizer(model, 1e-3, device)
    model.train()

    def one(x, y) -> int:
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            loss = model.loss(x, y, IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return int((x != pad_id).sum())

    timed = [batches[i % len(batches)] for i in range(steps)]
    for x, y in timed:  # warm-up over the very shapes timed: a shape's first step (kernel set-up, ~3x in bf16) is
        one(x, y)       # paid once a run, while training sees each batch's shape again every epoch
    _sync(device)
    started, tokens = time.perf_counter(), 0
    for x, y in timed:
        tokens += one(x, y)
    _sync(device)
    return tokens / (time.perf_counter() - started)


@torch.inference_mode()
def generate_tokens_per_s(model: LanguageModel, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> float:
    """Greedy decoding at batch 1; without the cache every token re-reads the whole sequence."""
    model.eval()
    started = time.perf_counter()
    if use_cache:
        cache = model.new_cache(1, max_len=prompt.shape[1] + new_tokens)
        logits = model.step(prompt, cache)
        for _ in range(new_tokens - 1):
            logits = model.step(logits.argmax(-1, keepdim=True), cache)
    else:
        seq = prompt
        for _ in range(new_tokens):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    _sync(prompt.device)
    return new_tokens / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CROSSWOZ if CROSSWOZ.exists() else DEMO_DATA), help="chat JSONL for realistic batches")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per architecture")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length for generation")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per timing")
    parser.add_argument("--repeats", type=int, default=3, help="generation timings per case (the best is kept)")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per training step")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    conversations, _ = read_conversations([args.data])
    tokenizer = Tokenizer.train((m["content"] for c in conversations for m in c.messages), words=False)  # the default tokenizer
    summary = {"bench": "summary", "device": str(device), "threads": torch.get_num_threads(), "data": Path(args.data).name}
    for arch in ARCHS:
        model = build_model(default_config(arch, tokenizer.vocab_size)).to(device)
        examples = make_turn_examples(conversations, tokenizer, model.config.block_size, EvidenceIndex.build(conversations),
                                      PromptRecipe(evidence_k=2, max_history=4))
        batches = make_batches(examples, args.batch_tokens, tokenizer.pad_id, random.Random(0))
        precisions = sorted({"fp32", resolve_precision("auto", device)})  # fp32, and bf16 where the device computes it natively
        rounds = [{p: train_tokens_per_s(model, batches, device, args.steps, tokenizer.pad_id, p) for p in precisions} for _ in range(2)]
        speed = {p: max(r[p] for r in rounds) for p in precisions}  # interleaved, the better of two rounds each
        train_tps = speed[resolve_precision("auto", device)]  # what `llmcore train` uses by default
        prompt = torch.randint(tokenizer.num_special, tokenizer.vocab_size, (1, args.prompt_tokens), device=device)
        cached = max(generate_tokens_per_s(model, prompt, args.new_tokens, True) for _ in range(args.repeats))
        uncached = max(generate_tokens_per_s(model, prompt, args.new_tokens, False) for _ in range(args.repeats))
        row = {"bench": "model", "arch": arch, "num_params": model.num_params(), "train_tokens_per_s": round(train_tps),
               **{f"train_tokens_per_s_{p}": round(v) for p, v in speed.items()},
               "bf16_over_fp32_train": round(speed["bf16"] / speed["fp32"], 2) if "bf16" in speed else None,
               "gen_tokens_per_s_cache": round(cached), "gen_tokens_per_s_no_cache": round(uncached),
               "cache_speedup": round(cached / uncached, 2)}
        print(json.dumps(row), flush=True)
        summary[f"{arch}_train_tokens_per_s"] = row["train_tokens_per_s"]
        summary[f"{arch}_cache_speedup"] = row["cache_speedup"]
    summary["transformer_over_lstm_train_speed"] = round(summary["transformer_train_tokens_per_s"] / summary["lstm_train_tokens_per_s"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
