"""Benchmark the inference service over HTTP on loopback (`llmcore serve` in a subprocess).

    .venv/bin/python bench/serve.py [--requests 256] [--shapes production,default,gpt2] [--skip-hf] [--device auto]
        [--models DIR] [--train-minutes 2]

**production** (first, the path the bot takes): a model trained for --train-minutes on the shared
CrossWOZ dialogues (or --models DIR's current version) answers held-out turns as they come in production:
75 % as the bot asks (greedy, its repetition penalty, its max_tokens, 4 earlier turns), 25 % sampled
(temperature 0.8, top-p 0.9, a seed each), all streamed, ending naturally. Closed loop at 1, 8, 32 and 64
clients; the same requests greedy without a penalty at 1 and 32 clients for comparison. Then the host-
overhead microbench: a 1-layer, 64-wide model (compute negligible) stepping the engine in-process with the
production mix at batch 1, 64 and 256: microseconds per decode step (median of 5-step windows, and the fastest).

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import SHARED_DATA, split_file, train_version  # noqa: E402
from bot.settings import BotSettings  # noqa: E402
from llmcore.chats import read_conversations  # noqa: E402
from llmcore.engine import Engine, intra_op_threads  # noqa: E402
from llmcore.evaluate import assistant_turns  # noqa: E402
from llmcore.model import ModelConfig, build_model, default_config  # noqa: E402
from llmcore.prompting import build_prompt  # noqa: E402
from llmcore.registry import Registry, save_checkpoint  # noqa: E402
from llmcore.sampling import SamplingParams  # noqa: E402
from llmcore.settings import ServeSettings  # noqa: E402
from llmcore.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402

FIRST_CHAR = 0x4E00  # prompts are CJK characters, one token each
CONCURRENCY = (1, 8, 32, 64)
SAMPLED_SHARE = 4  # every 4th production request is sampled
MICRO_BATCHES = (1, 64, 256)
MICRO_WINDOW = 5  # decode steps timed together; the microbench reports the median window (and the fastest)


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0

    def summary(self, name: str) -> dict:
        return {"case": name, "output_tok_s": round(self.tokens / self.seconds, 1), "tokens": self.tokens, "errors": self.errors,
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


def synthetic_body(prompt: str, max_tokens: int) -> dict:
    return {"model": "kefu", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True}


async def one_request(session: aiohttp.ClientSession, url: str, body: dict, result: Result) -> None:
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


async def closed_loop(url: str, requests: list[dict], clients: int) -> Result:
    result, queue = Result(), list(reversed(requests))
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client() -> None:
            while queue:
                await one_request(session, url, queue.pop(), result)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
    return result


async def poisson(url: str, requests: list[dict], rate: float, seed: int) -> Result:
    result, rng = Result(), random.Random(seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)) as session:
        started, tasks = time.perf_counter(), []
        for body in requests:
            tasks.append(asyncio.create_task(one_request(session, url, body, result)))
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
    pairs = make_requests(args.requests, args.seed, min(3000, tokenizer.vocab_size - len(SPECIAL_TOKENS)))
    requests = [synthetic_body(prompt, n) for prompt, n in pairs]
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
        out["hf_one_at_a_time_tok_s"] = _round(hf_throughput(config, pairs, 1))
        out["hf_static_batch32_tok_s"] = _round(hf_throughput(config, pairs, 32))
        if out["hf_static_batch32_tok_s"]:
            out["kefu32_over_hf_static32"] = round(by_case["closed 32"]["output_tok_s"] / out["hf_static_batch32_tok_s"], 2)
    return out


def production_requests(heldout: Path, n: int, bot: BotSettings) -> list[dict]:
    """Held-out user turns with 4 earlier turns, as the bot sends them; every SAMPLED_SHARE-th one sampled with a seed."""
    conversations, _ = read_conversations([heldout])
    turns = [t for t in assistant_turns(conversations) if t.history[-1]["role"] == "user"]
    bodies = []
    for i, turn in enumerate((turns * (n // max(len(turns), 1) + 1))[:n]):
        body = {"model": "kefu", "messages": turn.history[-1 - bot.model_history:], "max_tokens": bot.max_answer_tokens,
                "stream": True}
        if i % SAMPLED_SHARE == SAMPLED_SHARE - 1:
            body.update(temperature=0.8, top_p=0.9, seed=i)
        else:
            body.update(temperature=0, repetition_penalty=bot.repetition_penalty)
        bodies.append(body)
    return bodies


def prompt_stats(models: Path, bodies: list[dict]) -> dict:
    """The requests' prompts as the server builds them: tokens per prompt, and the share of prompt tokens that a
    prefix cache could serve at best (the longest prefix each prompt shares with any earlier one, cache unbounded).
    The prompt keeps the last 4 turns and puts the evidence just before the question, so a chat's next prompt
    shares little more than <bos> with its last one."""
    loaded = Registry(models).load()
    block, seen, reusable, total = loaded.model.config.block_size, set(), 0, 0
    for body in bodies:
        ids, _ = build_prompt(loaded.tokenizer, loaded.index, loaded.recipe, body["messages"], block - body["max_tokens"])
        shared = 0
        while shared < len(ids) and tuple(ids[: shared + 1]) in seen:
            shared += 1
        seen.update(tuple(ids[:k]) for k in range(1, len(ids) + 1))
        reusable, total = reusable + shared, total + len(ids)
    return {"prompt_tokens_per_request": round(total / len(bodies), 1), "prefix_reusable_share": round(reusable / total, 3)}


def plain_greedy(bodies: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if k not in ("repetition_penalty", "top_p", "seed")} | {"temperature": 0} for b in bodies]


async def bench_production(root: Path, args: argparse.Namespace) -> dict:
    """The bot's requests on a trained model, ending naturally; then the same requests greedy without penalty."""
    train, heldout = split_file(Path(args.data), 60, args.seed, root)
    models = Path(args.models) if args.models else root / "production"
    if not args.models:
        train_version(train, models, argparse.Namespace(arch="transformer", minutes=args.train_minutes, train_arg=[]))
    requests = production_requests(heldout, args.requests, BotSettings(_env_file=None))
    proc, base = start_server(models, args.device)
    url, rows = f"{base}/v1/chat/completions", []
    try:
        await closed_loop(url, requests[:8], 8)  # warm-up
        for clients in CONCURRENCY:
            rows.append((await closed_loop(url, requests[: 64 if clients == 1 else None], clients)).summary(f"closed {clients}"))
            print(json.dumps({"shape": "production", **rows[-1]}), flush=True)
        for clients in (1, 32):
            greedy = plain_greedy(requests[: 64 if clients == 1 else None])
            rows.append((await closed_loop(url, greedy, clients)).summary(f"greedy {clients}"))
            print(json.dumps({"shape": "production", **rows[-1]}), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    by_case = {r["case"]: r for r in rows}
    return {"shape": "production", "num_params": Registry(models).metrics(Registry(models).current()).get("num_params"),
            "rows": rows, "sampled_share": 1 / SAMPLED_SHARE, **prompt_stats(models, requests),
            "answer_tokens_per_request": round(by_case["closed 32"]["tokens"] / len(requests), 1),
            "speedup_32_over_1": round(by_case["closed 32"]["output_tok_s"] / by_case["closed 1"]["output_tok_s"], 2),
            "ttft_p50_32_over_1": round(by_case["closed 32"]["ttft_p50_ms"] / by_case["closed 1"]["ttft_p50_ms"], 2),
            "greedy_speedup_32_over_1": round(by_case["greedy 32"]["output_tok_s"] / by_case["greedy 1"]["output_tok_s"], 2),
            "production32_over_greedy32": round(by_case["closed 32"]["output_tok_s"] / by_case["greedy 32"]["output_tok_s"], 2)}


def microbench(steps: int = 60, vocab: int = 2048) -> dict:
    """Host overhead: µs per decode step (the median of 12 windows of 5 steps, and the fastest window) of a 1-layer,
    64-wide model with the production mix of parameters. The
    vocabulary is the size of the character tokenizer's on the shared dialogues (~1,800); the final norm's gain
    is raised so that next-token distributions are as peaked as a trained model's (at temperature 0.8 a 0.9
    nucleus of median ~9 tokens, a quarter of rows over 64; the production model: median 13, 23 % over 64),
    since the sampler's work depends on it and random weights give near-uniform ones. Threads as `llmcore serve`
    uses them (ServeSettings.torch_threads: on 2 vCPU one for decode steps, two for prefills)."""
    decode_threads, prefill_threads = ServeSettings().torch_threads()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="transformer", vocab_size=vocab, n_layer=1, n_embd=64, n_head=1, block_size=512))
    with torch.no_grad():
        model.ln_f.weight.mul_(14.0)
    out = {}
    with intra_op_threads(decode_threads):  # as the server decodes
        for batch in MICRO_BATCHES:
            engine = Engine(model, stop_ids=[], max_batch=batch, max_queue=batch, prefill_threads=prefill_threads)
            for i in range(batch):
                sampled = i % SAMPLED_SHARE == SAMPLED_SHARE - 1
                params = (SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_new_tokens=400) if sampled
                          else SamplingParams(repetition_penalty=1.2, max_new_tokens=400))
                engine.add([5 + i % 50] * 16, params, ignore_stop=True)
            engine.step()  # prefill
            for _ in range(3):
                engine.step()
            windows = []  # the median of short windows: a shared machine's interruptions land in a few of them
            for _ in range(steps // MICRO_WINDOW):
                started = time.perf_counter()
                for _ in range(MICRO_WINDOW):
                    engine.step()
                windows.append((time.perf_counter() - started) / MICRO_WINDOW * 1e6)
            out[f"batch_{batch}_us_per_step"] = round(statistics.median(windows), 1)
            out[f"batch_{batch}_us_per_step_min"] = round(min(windows), 1)
    out["threads"] = {"decode": decode_threads, "prefill": prefill_threads}
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_table(results: list[dict], matmul: float, micro: dict | None) -> None:
    print(f"\n{'shape':8} {'case':14} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'err':>4}")
    for res in results:
        for r in res["rows"]:
            print(f"{res['shape']:8} {r['case']:14} {r['output_tok_s']:8.1f} {r['ttft_p50_ms']!s:>9} {r['ttft_p99_ms']!s:>9} "
                  f"{r['tpot_p50_ms']!s:>9} {r['tpot_p99_ms']!s:>9} {r['errors']:4d}")
        print(f"{res['shape']:8} 32 vs 1 clients: {res['speedup_32_over_1']}x throughput (target >= 8), "
              f"TTFT p50 {res['ttft_p50_32_over_1']}x (target <= 3)", end="")
        if "decode_flops_64" in res:
            print(f"; decode at 64 clients {100 * res['decode_flops_64'] / matmul:.1f}% of a 1024^3 matmul", end="")
        if "greedy_speedup_32_over_1" in res:
            print(f"; greedy without penalty {res['greedy_speedup_32_over_1']}x; production at 32 = "
                  f"{res['production32_over_greedy32']}x greedy at 32; {res['prompt_tokens_per_request']} prompt tokens and "
                  f"{res['answer_tokens_per_request']} answer tokens a request, {100 * res['prefix_reusable_share']:.1f}% of prompt "
                  "tokens reusable by an ideal prefix cache", end="")
        print()
        if res.get("kefu32_over_hf_static32"):
            print(f"{res['shape']:8} vs transformers generate: one at a time {res['hf_one_at_a_time_tok_s']} tok/s, static batch 32 "
                  f"{res['hf_static_batch32_tok_s']} tok/s; kefu at 32 clients {res['kefu32_over_hf_static32']}x (target >= 1.5)")


async def amain(args: argparse.Namespace) -> None:
    matmul = matmul_flops()
    results = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-") as tmp:
        for shape in args.shapes.split(","):
            if shape == "production":
                results.append(await bench_production(Path(tmp), args))
            else:
                results.append(await bench_shape(shape, Path(tmp), args))
    for res in results:
        if "decode_flops_64" in res:
            res["decode_fraction_of_matmul"] = round(res["decode_flops_64"] / matmul, 3)
    micro = None if args.skip_micro else microbench()
    print_table(results, matmul, micro)
    if micro:
        print("host overhead (1 layer x 64 wide, production mix): " + ", ".join(f"{k} {v}" for k, v in micro.items())
              + " (targets: <= 1000 us at 64, <= 3000 us at 256)")
    print(json.dumps({"bench": "serve", "device": args.device, "threads": torch.get_num_threads(),
                      "matmul_gflops": round(matmul / 1e9, 1), "results": results, "host_overhead": micro}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256, help="requests per case")
    parser.add_argument("--shapes", default="production,default,gpt2", help="comma-separated: production, default, gpt2")
    parser.add_argument("--data", default=str(SHARED_DATA), help="dialogues for the production model and its requests")
    parser.add_argument("--models", help="registry whose current version serves the production mix (default: train one)")
    parser.add_argument("--train-minutes", type=float, default=2.0, help="training budget of the production model")
    parser.add_argument("--skip-micro", action="store_true", help="skip the host-overhead microbench")
    parser.add_argument("--rates", type=float, nargs=2, default=[20.0, 60.0], help="Poisson arrival rates (requests/s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the requests")
    parser.add_argument("--skip-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--device", default="auto", help="server device: auto, cpu or cuda")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
