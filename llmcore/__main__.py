"""Kefu's model on the command line.

    python -m llmcore train --data FILE [FILE ...] --arch lstm|transformer --models DIR [--max-minutes M] [--promote]
    python -m llmcore models list|promote V|rollback --models DIR
    python -m llmcore generate --models DIR [--version V] TEXT
    python -m llmcore eval --models DIR [--version V] --data FILE [--limit N]
    python -m llmcore chat --models DIR            # talk to the current version in the terminal
    python -m llmcore serve --models DIR [--host 127.0.0.1] [--port 8700] [--max-batch N] [--max-queue N]

Run any command with --help for every flag. Errors print one line and exit with status 2 (bad input)
or 130 (interrupted).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from llmcore.chats import DEMO_DATA, DataError
from llmcore.selection import DEFAULT_SELECTION, GREEDY, Selection

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmcore", description="Kefu's language model: train, serve, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a new model version from chat JSONL")
    train.add_argument("--data", nargs="+", default=[str(DEMO_DATA)], metavar="FILE",
                       help="chat JSONL files, {\"messages\": [...]} per line (default: the demo shop FAQ)")
    train.add_argument("--arch", choices=("transformer", "lstm"), default="transformer", help="model architecture")
    train.add_argument("--models", required=True, metavar="DIR", help="model registry folder")
    train.add_argument("--epochs", type=int, help="passes over the data (default 10 when no --max-minutes)")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget; training stops cleanly and saves when it is spent")
    train.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    train.add_argument("--promote", action="store_true", help="make the new version current")
    train.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and batch order")
    train.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping")
    train.add_argument("--val-fraction", type=float, default=0.1, help="share of conversations held out for validation")
    train.add_argument("--batch-tokens", type=int, help="padded tokens per optimisation step (default: 2048, less for small data)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    train.add_argument("--patience", type=int, default=8, help="validations without improvement before stopping early")
    train.add_argument("--vocab-size", type=int, default=8000, help="maximum vocabulary (all characters are always kept)")
    train.add_argument("--min-freq", type=int, default=2, help="minimum count for a word to get its own token")
    train.add_argument("--tokenizer", choices=("chars", "words"), default="chars",
                       help="chars (default: one token per character) or words (jieba words, characters as fallback)")
    train.add_argument("--evidence", type=int, default=2, metavar="K",
                       help="retrieved stored answers in each prompt, which the model may copy (0: none; default 2)")
    train.add_argument("--evidence-tokens", type=int, default=96, metavar="N", help="each piece of evidence is cut to N tokens")
    train.add_argument("--no-question-loss", dest="question_loss", action="store_false",
                       help="learn the answers only (default: each window's user question too)")
    train.add_argument("--history", type=int, default=4, metavar="N",
                       help="earlier turns of the conversation in each prompt (default 4)")
    train.add_argument("--select-samples", type=int, default=DEFAULT_SELECTION.samples, metavar="N",
                       help="sampled answers beside the greedy one that the served answer is chosen among "
                            f"(minimum Bayes risk, char-F1; default {DEFAULT_SELECTION.samples}; 0 with --select-retrieved 0: greedy)")
    train.add_argument("--select-retrieved", type=int, default=DEFAULT_SELECTION.retrieved, metavar="K",
                       help=f"nearest stored answers that join those candidates (default {DEFAULT_SELECTION.retrieved})")
    train.add_argument("--select-greedy-weight", type=float, default=DEFAULT_SELECTION.greedy_weight, metavar="W",
                       help="the greedy answer's vote among the candidates, in stored answers' votes "
                            f"(default {DEFAULT_SELECTION.greedy_weight:g})")
    train.add_argument("--select-variants", type=int, default=DEFAULT_SELECTION.variants, metavar="N",
                       help="more greedy answers among the candidates, each prompted with the next stored answers as "
                            f"evidence; they vote as the greedy one (default {DEFAULT_SELECTION.variants})")
    for name, kind, text in (("n-layer", int, "layers"), ("n-embd", int, "width"), ("n-head", int, "attention heads"),
                             ("block-size", int, "context length in tokens"), ("dropout", float, "dropout")):
        train.add_argument(f"--{name}", type=kind, help=f"model {text} (default: the arch's default size)")
    train.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                       help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (1.4x faster on 2 cores), else fp32")
    train.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                       help="keep an exponential moving average of the weights with this decay per step (e.g. 0.998) and "
                            "end with it (0: off)")
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    train.add_argument("--label-smoothing", type=float, default=0.0,
                       help="label smoothing of the training loss (default 0: off; validation stays plain)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--progress-file", metavar="FILE", help="also write progress as JSON here (~1/s), for a job watcher")
    train.add_argument("--compare-current", action="store_true", help="score the current version on the same held-out data too")
    train.add_argument("--result-file", metavar="FILE", help="write the final metrics JSON here once the version is saved")

    models = commands.add_parser("models", help="list versions, promote one, or roll back")
    models.add_argument("action", choices=("list", "promote", "rollback"), help="what to do")
    models.add_argument("version", nargs="?", help="version to promote (v0001, ...)")
    models.add_argument("--models", required=True, metavar="DIR", help="model registry folder")

    generate = commands.add_parser("generate", help="answer one message on the terminal")
    generate.add_argument("text", help="the user's message")
    generate.add_argument("--models", required=True, metavar="DIR", help="model registry folder")
    generate.add_argument("--version", help="version to use (default: current)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    generate.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    generate.add_argument("--seed", type=int, help="makes sampling reproducible")
    generate.add_argument("--device", default="auto", help="auto, cpu or cuda")

    chat = commands.add_parser("chat", help="a terminal conversation with a version (history kept; /reset, /quit)")
    chat.add_argument("--models", required=True, metavar="DIR", help="model registry folder")
    chat.add_argument("--version", help="version to use (default: current)")
    chat.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    chat.add_argument("--device", default="auto", help="auto, cpu or cuda")

    serve = commands.add_parser("serve", help="the OpenAI-compatible inference service (continuous batching)")
    serve.add_argument("--models", metavar="DIR", help="model registry folder (env LLMCORE_MODELS, default models)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8700)")
    serve.add_argument("--max-batch", type=int, help="sequences decoded together (default 32)")
    serve.add_argument("--max-queue", type=int, help="waiting requests before answering 503 (default 256)")
    serve.add_argument("--device", help="auto (cuda if present), cpu or cuda")
    serve.add_argument("--threads", type=int, help="torch threads of decode steps (default 0: the CPUs less one, at least 1)")
    serve.add_argument("--prefill-threads", type=int, help="torch threads while prompts are prefilled (default 0: the CPUs)")
    serve.add_argument("--no-select", dest="select", action="store_const", const=False,
                       help="answer greedy requests greedily, not by the version's choice among candidates (LLMCORE_SELECT=0)")

    evaluate = commands.add_parser("eval", help="perplexity and answer char-F1 of a version on chat JSONL, as JSON")
    evaluate.add_argument("--models", required=True, metavar="DIR", help="model registry folder")
    evaluate.add_argument("--version", help="version to evaluate (default: current)")
    evaluate.add_argument("--data", required=True, nargs="+", metavar="FILE", help="chat JSONL files")
    evaluate.add_argument("--limit", type=int, help="score only the first N assistant turns for char-F1")
    evaluate.add_argument("--repetition-penalty", type=float, default=1.0, help="for the greedy answers")
    evaluate.add_argument("--max-new-tokens", type=int, default=96, help="longest answer in tokens")
    evaluate.add_argument("--greedy", action="store_true",
                          help="the greedy answer alone, not the version's choice among candidates (to compare)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from llmcore.train import TrainOptions, main

    overrides = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "block_size", "dropout") if getattr(args, k) is not None}
    opts = TrainOptions(
        data=args.data, arch=args.arch, models=args.models, epochs=args.epochs, max_minutes=args.max_minutes,
        device=args.device, promote=args.promote, seed=args.seed, skip_bad=args.skip_bad, val_fraction=args.val_fraction,
        batch_tokens=args.batch_tokens, lr=args.lr, patience=args.patience, vocab_size=args.vocab_size,
        min_freq=args.min_freq, model_overrides=overrides, progress=not args.no_progress, progress_file=args.progress_file,
        compare_current=args.compare_current, result_file=args.result_file, tokenizer=args.tokenizer,
        evidence_k=args.evidence, max_history=args.history, max_evidence_tokens=args.evidence_tokens,
        question_loss=args.question_loss,
        selection=Selection(args.select_samples, args.select_retrieved, greedy_weight=args.select_greedy_weight,
                            variants=args.select_variants),
        precision=args.precision, ema=args.ema, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
    )
    metrics = main(opts)
    if "version" not in metrics:  # another rank of a torchrun job: rank 0 reports
        return
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    print(
        f"trained {metrics['version']}{' (current)' if opts.promote else ''}: "
        f"{metrics['arch']} {metrics['num_params'] / 1e6:.2f} M params, "
        f"val_ppl {_fmt(metrics['val_ppl'])}, val_char_f1 {_fmt(metrics['val_char_f1'])} "
        f"(retrieval baseline {_fmt(metrics.get('val_baseline_char_f1'))}), "
        f"{metrics['train_tokens_per_s']:,.0f} tok/s, {metrics['train_seconds']:.0f} s ({metrics['stop_reason']})"
    )


def cmd_models(args: argparse.Namespace) -> None:
    from llmcore.registry import Registry, RegistryError

    registry = Registry(args.models)

    def loadable(version: str) -> str:
        """`version`, once it loads as `llmcore serve` would load it: a version that cannot (a checkpoint of another
        shape, torn weights) made current left llmcore unable to start."""
        try:
            registry.load(version)
        except RegistryError:
            raise
        except Exception as exc:  # torch's own errors for a checkpoint it cannot read
            raise RegistryError(f"version {version} cannot be loaded ({exc.__class__.__name__}: {exc}); current is unchanged") from None
        return version

    if args.action == "promote":
        if not args.version:
            raise RegistryError("promote needs a version: models promote v0003 --models DIR")
        registry.promote(loadable(args.version))
        print(f"current is now {args.version}")
    elif args.action == "rollback":
        target = loadable(registry.rollback_target())
        registry.promote(target, rollback=True)
        print(f"current is now {target}")
    else:
        current = registry.current()
        for version in registry.versions():
            try:
                m = registry.metrics(version)
            except RegistryError:
                m = {}
            print(f"{'*' if version == current else ' '} {version}  {m.get('arch', '?'):<11} params {m.get('num_params', 0) / 1e6:5.2f}M  "
                  f"val_ppl {_fmt(m.get('val_ppl'))}  val_char_f1 {_fmt(m.get('val_char_f1'))}  {m.get('created', '')}")
        if not registry.versions():
            print(f"no versions in {args.models}")


def answer(loaded, messages: list[dict], params) -> tuple[str, float]:
    """The model's reply to a conversation, and its confidence (mean token log-probability)."""
    from llmcore.prompting import build_prompt
    from llmcore.sampling import generate, prompt_budget

    budget = prompt_budget(loaded.model.config.block_size, params.max_new_tokens)
    prompt, _ = build_prompt(loaded.tokenizer, loaded.index, loaded.recipe, messages, budget)
    [out] = generate(loaded.model, [prompt], params, loaded.tokenizer.stop_ids)
    return loaded.tokenizer.decode(out.token_ids), out.confidence


def cmd_generate(args: argparse.Namespace) -> None:
    from llmcore.model import resolve_device
    from llmcore.registry import Registry
    from llmcore.sampling import SamplingParams

    loaded = Registry(args.models).load(args.version, resolve_device(args.device))
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens, seed=args.seed)
    text, confidence = answer(loaded, [{"role": "user", "content": args.text}], params)
    print(text)
    logging.getLogger("llmcore").info("version %s, confidence %.3f", loaded.version, confidence)


def cmd_chat(args: argparse.Namespace) -> None:
    from llmcore.model import resolve_device
    from llmcore.registry import Registry
    from llmcore.sampling import SamplingParams

    loaded = Registry(args.models).load(args.version, resolve_device(args.device))
    params = SamplingParams(repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens)
    print(f"Kefu model {loaded.version} ({loaded.model.config.arch}). Type a question; /reset forgets, /quit or Ctrl-D leaves.")
    messages: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            messages = []
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        reply, confidence = answer(loaded, messages, params)
        messages.append({"role": "assistant", "content": reply})
        print(f"kefu> {reply}    [confidence {confidence:.2f}]")


def cmd_eval(args: argparse.Namespace) -> None:
    from llmcore.chats import read_conversations
    from llmcore.evaluate import evaluate
    from llmcore.model import resolve_device
    from llmcore.registry import Registry

    loaded = Registry(args.models).load(args.version, resolve_device(args.device))
    conversations, _ = read_conversations(args.data)
    result = evaluate(loaded.model, loaded.tokenizer, conversations, limit=args.limit,
                      repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                      index=loaded.index, recipe=loaded.recipe, gate=loaded.gate,
                      selection=GREEDY if args.greedy else loaded.selection)
    print(json.dumps({"version": loaded.version, **result}, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> None:
    import torch
    from aiohttp import web

    from llmcore.model import resolve_device
    from llmcore.registry import Registry
    from llmcore.server import RUNNER_OPTIONS, create_app
    from llmcore.settings import ServeSettings
    from llmcore.worker import Worker

    overrides = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields and v is not None}
    settings = ServeSettings(**overrides)
    registry = Registry(settings.models)
    if registry.current() is None:
        raise ValueError(f"no current version in {settings.models}: train one with `python -m llmcore train --promote`")
    decode_threads, prefill_threads = settings.torch_threads()
    torch.set_num_threads(decode_threads)
    worker = Worker(registry, resolve_device(settings.device), max_batch=settings.max_batch, max_queue=settings.max_queue,
                    max_prefill_tokens=settings.max_prefill_tokens, prefill_threads=prefill_threads)
    web.run_app(create_app(settings, worker), host=settings.host, port=settings.port, print=None, **RUNNER_OPTIONS)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from llmcore.registry import RegistryError
    from llmcore.tokenizer import TokenizerError
    from llmcore.train import TrainingInterrupted

    handlers = {"train": cmd_train, "models": cmd_models, "generate": cmd_generate, "chat": cmd_chat, "eval": cmd_eval, "serve": cmd_serve}
    try:
        handlers[args.command](args)
    except (DataError, RegistryError, TokenizerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a models folder that is a file, a full disk, no permission
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        print(f"interrupted ({exc or 'SIGINT'}): nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
