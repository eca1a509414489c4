"""Benchmark the inference service over HTTP on loopback (`llmcore serve` in a subprocess).

    .venv/bin/python bench/serve.py [--requests 256] [--shapes default,gpt2] [--skip-hf] [--device auto]

For each model shape (the default Transformer, and a GPT-2-like 4 layers × 4 heads × 256 wide with a
16k vocabulary; random weights — speed does not depend on them), 256 seeded requests with prompts of
16–64 tokens and outputs of 8–64 tokens (exactly: `ignore_eos`) are sent closed-loop at 1, 8, 32 and
64 concurrent clients, then as Poisson arrivals at two rates. Each request streams, so the client
measures time to first token (TTFT) and time per output token (TPOT).

In the same run: a 1024³ fp32 matmul (the machine's FLOP/s yardstick) and, with the `bench` extra
installed, the same requests through Hugging Face transformers `generate` on a GPT-2 of the same
shape, one at a time and in static padded batches of 32. Prints a table, then one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import torch

from llmcore.model import ModelConfig, build_model, default_config
from llmcore.registry import Registry, save_checkpoint
from llmcore.tokenizer import SPECIAL_TOKENS, Tokenizer

REPO = Path(__file__).resolve().parents[1]
FIRST_CHAR = 0x4E00  # prompts are CJK characters, one token each
CONCURRENCY = (1, 8, 32, 64)


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0

    def summary(self, name: str) -> dict:
        return {"case": name, "output_tok_s": round(self.tokens / self.seconds, 1), "errors": self.errors,
                "ttft_p50_ms": _ms(_pct(self.ttft, 50)), "ttft_p99_ms": _ms(_pct(self.ttft, 99)),
                "tpot_p50_ms": _ms(_pct(self.tpot, 50)), "tpot_p99_ms": _ms(_pct(self.tpot, 99))}


def _pct(values: list[float], q: float) -> float | None:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) >= 2 else (values[0] if values else None)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def shape_config(name: str, vocab: int) -> ModelConfig:
    if name == "gpt2":
        return ModelConfig(arch="transformer", vocab_size=vocab, n_layer=4, n_head=4, n_embd=256, block_size=256)
    return default_config("transformer", vocab)


def make_registry(root: Path, shape: str) -> tuple[Registry, Tokenizer, ModelConfig]:
    vocab = 16_000 if shape == "gpt2" else 8_000
    tokens = list(SPECIAL_TOKENS) + [chr(FIRST_CHAR + i) for i in range(vocab - len(SPECIAL_TOKENS))]
    tokenizer = Tokenizer(tokens)
    torch.manual_seed(0)
    model = build_model(shape_config(shape, vocab))
    registry = Registry(root / shape)
    with registry.staging() as staged:
        save_checkpoint(staged, model, tokenizer)
        version = registry.commit(staged)
    registry.promote(version)
    return registry, tokenizer, model.config


def make_requests(n: int, seed: int, num_chars: int) -> list[tuple[str, int]]:
    """(prompt text, output tokens); each character is one token. Characters avoid jieba's multi-char words
    by using a random sequence; unknown words fall back to characters anyway."""
    rng = random.Random(seed)
    return [("".join(chr(FIRST_CHAR + rng.randrange(num_chars)) for _ in range(rng.randint(16, 64))), rng.randint(8, 64))
            for _ in range(n)]


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, result: Result) -> None:
    body = {"model": "kefu", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True}
    started = time.perf_counter()
    first = last = None
    count = 0
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                result.errors += 1
                await response.read()
                return
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                if b'"usage"' in line:  # the last chunk: only it is parsed (the client shares the server's cores)
                    count = json.loads(line[6:])["usage"]["completion_tokens"]
                elif b'"role"' not in line:  # the first chunk carries the role; every later one, new tokens
                    now = time.perf_counter()
                    first = first or now
                    last = now
    except aiohttp.ClientError:
        result.errors += 1
        return
    result.tokens += count
    if first is not None:
        result.ttft.append(first - started)
        if count > 1:
            result.tpot.append((last - first) / (count - 1))


async def closed_loop(url: str, requests: list[tuple[str, int]], clients: int) -> Result:
    result, queue = Result(), list(requests)
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client() -> None:
            while queue:
                prompt, max_tokens = queue.pop()
                await one_request(session, url, prompt, max_tokens, result)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
    return result


async def poisson(url: str, requests: list[tuple[str, int]], rate: float, seed: int) -> Result:
    result, rng = Result(), random.Random(seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)) as session:
        started, tasks = time.perf_counter(), []
        for prompt, max_tokens in requests:
            tasks.append(asyncio.create_task(one_request(session, url, prompt, max_tokens, result)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - started
    return result


def matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def hf_throughput(config: ModelConfig, requests: list[tuple[str, int]], batch: int) -> float | None:
    """Output tokens/s of transformers' GPT-2 `generate`, greedy, exact lengths, static padded batches."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                                       n_layer=config.n_layer, n_head=config.n_head)).eval()
    rng = random.Random(0)
    ids = [[rng.randrange(8, config.vocab_size) for _ in range(len(p))] for p, _ in requests]
    started, produced = time.perf_counter(), 0
    with torch.inference_mode():
        for i in range(0, len(requests), batch):
            group, lengths = ids[i : i + batch], [n for _, n in requests[i : i + batch]]
            width = max(map(len, group))
            input_ids = torch.tensor([[0] * (width - len(g)) + g for g in group])  # left padding
            mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group])
            new = max(lengths)  # a static batch runs until its longest member is done
            model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
            produced += sum(lengths)  # only the tokens each request asked for are useful
    return produced / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(models.parent / f"serve-{port}.log", "wb")  # a file, not a pipe: an unread pipe fills up and blocks the server
    proc = subprocess.Popen([sys.executable, "-m", "llmcore", "serve", "--models", str(models), "--port", str(port),
                             "--max-batch", "64", "--max-queue", "4096", "--device", device],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LLMCORE_ADMIN_TOKEN": ""})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, base
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server did not start: " + Path(log.name).read_text()[-2000:]) from None
            time.sleep(0.1)
    raise RuntimeError("server did not start in 60 s")


async def bench_shape(shape: str, root: Path, args: argparse.Namespace) -> dict:
    registry, tokenizer, config = make_registry(root, shape)
    requests = make_requests(args.requests, args.seed, min(3000, tokenizer.vocab_size - len(SPECIAL_TOKENS)))
    proc, base = start_server(registry.root, args.device)
    url = f"{base}/v1/chat/completions"
    rows = []
    try:
        await closed_loop(url, requests[:8], 8)  # warm-up
        for clients in CONCURRENCY:
            rows.append((await closed_loop(url, requests, clients)).summary(f"closed {clients}"))
            print(json.dumps({"shape": shape, **rows[-1]}), flush=True)
        for rate in args.rates:
            rows.append((await poisson(url, requests, rate, args.seed)).summary(f"poisson {rate}/s"))
            print(json.dumps({"shape": shape, **rows[-1]}), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    by_case = {r["case"]: r for r in rows}
    num_params = build_model(config).num_params()
    out = {"shape": shape, "num_params": num_params, "rows": rows,
           "speedup_32_over_1": round(by_case["closed 32"]["output_tok_s"] / by_case["closed 1"]["output_tok_s"], 2),
           "ttft_p50_32_over_1": round(by_case["closed 32"]["ttft_p50_ms"] / by_case["closed 1"]["ttft_p50_ms"], 2),
           "decode_flops_64": 2 * num_params * by_case["closed 64"]["output_tok_s"]}
    if shape == "gpt2" and not args.skip_hf:
        out["hf_one_at_a_time_tok_s"] = _round(hf_throughput(config, requests, 1))
        out["hf_static_batch32_tok_s"] = _round(hf_throughput(config, requests, 32))
        if out["hf_static_batch32_tok_s"]:
            out["kefu32_over_hf_static32"] = round(by_case["closed 32"]["output_tok_s"] / out["hf_static_batch32_tok_s"], 2)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_table(results: list[dict], matmul: float) -> None:
    print(f"\n{'shape':8} {'case':14} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'err':>4}")
    for res in results:
        for r in res["rows"]:
            print(f"{res['shape']:8} {r['case']:14} {r['output_tok_s']:8.1f} {r['ttft_p50_ms']!s:>9} {r['ttft_p99_ms']!s:>9} "
                  f"{r['tpot_p50_ms']!s:>9} {r['tpot_p99_ms']!s:>9} {r['errors']:4d}")
        print(f"{res['shape']:8} 32 vs 1 clients: {res['speedup_32_over_1']}x throughput (target >= 8), "
              f"TTFT p50 {res['ttft_p50_32_over_1']}x (target <= 3); decode at 64 clients "
              f"{100 * res['decode_flops_64'] / matmul:.1f}% of a 1024^3 matmul (target >= 25%)")
        if res.get("kefu32_over_hf_static32"):
            print(f"{res['shape']:8} vs transformers generate: one at a time {res['hf_one_at_a_time_tok_s']} tok/s, static batch 32 "
                  f"{res['hf_static_batch32_tok_s']} tok/s; kefu at 32 clients {res['kefu32_over_hf_static32']}x (target >= 1.5)")


async def amain(args: argparse.Namespace) -> None:
    matmul = matmul_flops()
    results = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-") as tmp:
        for shape in args.shapes.split(","):
            results.append(await bench_shape(shape, Path(tmp), args))
    for res in results:
        res["decode_fraction_of_matmul"] = round(res["decode_flops_64"] / matmul, 3)
    print_table(results, matmul)
    print(json.dumps({"bench": "serve", "device": args.device, "threads": torch.get_num_threads(),
                      "matmul_gflops": round(matmul / 1e9, 1), "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256, help="requests per case")
    parser.add_argument("--shapes", default="default,gpt2", help="comma-separated: default, gpt2")
    parser.add_argument("--rates", type=float, nargs=2, default=[20.0, 60.0], help="Poisson arrival rates (requests/s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the requests")
    parser.add_argument("--skip-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--device", default="auto", help="server device: auto, cpu or cuda")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
