"""Train a new model version from chat JSONL.

    python -m llmcore train --data FILE [FILE ...] --arch lstm|transformer --models DIR \
        [--epochs N] [--max-minutes M] [--device auto|cpu|cuda] [--promote] [--seed S]

Splits train/validation by conversation, trains with AdamW (warmup, cosine decay, gradient clipping,
bf16 autocast on CUDA and on CPUs with native bf16: 1.4x the tokens/s on 2 cores), evaluates on
validation regularly, keeps the best weights, stops early when validation stops improving or at the time budget,
and writes a complete version into the registry
(nothing at all if the run fails or is interrupted).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from llmcore import chats
from llmcore.chats import Conversation, data_sha256, read_conversations, split_conversations, write_conversations
from llmcore.comparison import compare_with
from llmcore.dataset import IGNORE_INDEX, make_batches, make_turn_examples
from llmcore.distributed import Distributed
from llmcore.evaluate import (
    ANSWER_TOKENS,
    BOT_REPETITION_PENALTY,
    VAL_CHAR_F1_TURNS,
    answer_turns,
    assistant_turns,
    evaluate_turns,
    loss_on,
)
from llmcore.gate import RIGHT_F1, Gate, cross_fitted_probabilities, gate_curve
from llmcore.model import LanguageModel, ModelConfig, build_model, default_config, resolve_device
from llmcore.plots import plot_loss
from llmcore.progress import ProgressFile
from llmcore.prompting import PLAIN, PromptRecipe
from llmcore.registry import HELDOUT, LOSS_PLOT, METRICS, TRAINED, Registry, save_checkpoint, write_atomic
from llmcore.retrieval import EvidenceIndex
from llmcore.sampling import SamplingParams
from llmcore.selection import DEFAULT_SELECTION, Selection
from llmcore.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

PEAK_LR = {"transformer": 2e-3, "lstm": 3e-3}  # at the default width; wider models get less (default_lr)
LR_WIDTH = {"transformer": 192, "lstm": 384}
MIN_STEPS_PER_EPOCH = 20  # small data (an FAQ) gets smaller batches, so it sees enough updates
BATCH_TOKENS_RANGE = (512, 2048)
WARMUP_STEPS = 20
FINAL_LR_FRACTION = 0.1
EVALS_PER_BUDGET = 12  # with a time budget, validate this often (at most every MIN_EVAL_INTERVAL_S)
MIN_EVAL_INTERVAL_S = 5.0
KEEP_FINAL_TOLERANCE = 0.01  # keep the final weights unless validation got this much (relative) worse than the best
PRECISIONS = ("auto", "bf16", "fp32")
MIN_VAL_ANSWERS = 20  # fewer held-out answers are too few to stop or go back by: the run keeps its final weights


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM during training: nothing is written."""


@dataclass
class TrainOptions:
    data: list[str]
    arch: str
    models: str
    epochs: int | None = None
    max_minutes: float | None = None
    device: str = "auto"
    promote: bool = False
    seed: int = 0
    skip_bad: bool = False
    val_fraction: float = 0.1
    batch_tokens: int | None = None  # None: auto, see auto_batch_tokens
    lr: float | None = None
    patience: int = 8  # evaluations without improvement before stopping
    vocab_size: int = 8000
    min_freq: int = 2
    model_overrides: dict = field(default_factory=dict)  # n_layer, n_embd, n_head, block_size, dropout
    tokenizer: str = "chars"  # chars | words (jieba words + characters)
    evidence_k: int = 2  # retrieved answers in each prompt (0: no retrieval-augmented generation)
    max_history: int | None = 4  # turns before the question in each prompt (None: as many as fit)
    max_evidence_tokens: int = 96  # each piece of evidence is cut to this
    question_loss: bool = True  # also learn the user's question of each window: +0.03 char-F1 (docs/benchmarks.md)
    selection: Selection = DEFAULT_SELECTION  # how the version chooses its answer among candidates (select.json)
    progress: bool = True
    progress_file: str | None = None  # JSON progress for whoever watches the job (the admin API), rewritten ~1/s
    compare_current: bool = False  # also score the current version on the same held-out conversations
    result_file: str | None = None  # the final metrics, written once the version is committed
    precision: str = "auto"  # auto (bf16 autocast where the device computes it natively) | bf16 | fp32
    ema: float = 0.0  # decay per step of the weights' moving average the run ends with (0: the last weights)
    weight_decay: float = 0.1  # AdamW's, on matrices only
    label_smoothing: float = 0.0  # of the training loss (validation loss and perplexity stay plain)

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_minutes is None:
            self.epochs = 10
        checks = [
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be positive"),
            (0 <= self.val_fraction <= 0.5, "--val-fraction must be between 0 and 0.5"),
            (self.batch_tokens is None or self.batch_tokens >= 16, "--batch-tokens must be at least 16"),
            (self.lr is None or self.lr >= 0, "--lr must not be negative"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.vocab_size >= 16 and self.min_freq >= 1, "--vocab-size must be at least 16 and --min-freq at least 1"),
            (self.tokenizer in ("chars", "words"), "--tokenizer must be chars or words"),
            (0 <= self.evidence_k <= 8, "--evidence must be between 0 and 8"),
            (self.max_evidence_tokens >= 1, "--evidence-tokens must be at least 1"),
            (self.max_history is None or self.max_history >= 0, "--history must not be negative"),
            (self.precision in PRECISIONS, "--precision must be auto, bf16 or fp32"),
            (0 <= self.ema < 1, "--ema must be at least 0 and below 1"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be at least 0 and below 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def lr_at(step: int, progress: float, peak: float) -> float:
    """Linear warmup over the first steps, then cosine from peak to FINAL_LR_FRACTION * peak over `progress` in [0, 1]."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)


def history_seen(conversations: list[Conversation], max_history: int | None) -> int | None:
    """The earlier turns the version will be shown: at most `max_history`, and no more than its training data had.
    A version trained on single exchanges (an FAQ) is served the question alone, whatever history a client sends:
    a history it never saw would only derail it."""
    seen = max((i - 1 for c in conversations for i, m in enumerate(c.messages) if m["role"] == "assistant" and i > 0), default=0)
    return seen if max_history is None else min(max_history, seen)


def default_lr(config: ModelConfig) -> float:
    """The arch's peak lr at its default width, scaled down in proportion for wider models: a 27 M Transformer
    (8 x 512) diverged at the small model's 3e-3 on a GPU, so the recipe must shrink its steps as it grows."""
    return PEAK_LR[config.arch] * min(1.0, LR_WIDTH[config.arch] / config.n_embd)


def auto_batch_tokens(examples: list) -> int:
    """About 2k tokens per step, fewer for small data so one epoch is at least MIN_STEPS_PER_EPOCH steps."""
    per_epoch = sum(len(e.ids) for e in examples)
    low, high = BATCH_TOKENS_RANGE
    return int(min(high, max(low, per_epoch // MIN_STEPS_PER_EPOCH)))


def make_optimizer(model: LanguageModel, lr: float, device: torch.device, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16/AMX: 1.4x the training tokens/s of
    fp32 on 2 cores, docs/benchmarks.md), fp32 elsewhere (emulated bf16 is slower). Weights and optimizer stay fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    native = device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


_held = {"on": False, "pending": None}  # see _signals_held


def _raise_interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
    if _held["on"]:
        _held["pending"] = signum
        return
    raise TrainingInterrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_held():
    """SIGINT / SIGTERM wait while a finished version is committed, promoted and reported: one that arrived between the
    commit and the result file left a version no job knew of (the job said nothing was saved). The work is done by
    then: a signal that came during it is logged, not acted on."""
    _held.update(on=True, pending=None)
    try:
        yield
    finally:
        pending = _held["pending"]
        _held.update(on=False, pending=None)
        if pending is not None:
            logger.info("%s arrived while the version was being saved; it is saved", signal.Signals(pending).name)


def train(opts: TrainOptions) -> tuple[str, dict]:
    """Train, evaluate and commit a version; returns (version, metrics)."""
    started = time.monotonic()
    random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    dist = Distributed.from_env(opts.device)
    device = dist.device or resolve_device(opts.device)
    registry = Registry(opts.models)
    registry.root.mkdir(parents=True, exist_ok=True)  # fail now, not after minutes of training
    progress = ProgressFile(opts.progress_file if dist.is_main else None)
    progress.write(stage="preparing", force=True)
    conversations, skipped = read_conversations(opts.data, skip_bad=opts.skip_bad)
    train_convs, val_convs = split_conversations(conversations, opts.val_fraction, opts.seed)
    tokenizer = Tokenizer.train((m["content"] for c in conversations for m in c.messages), opts.vocab_size, opts.min_freq,
                                words=opts.tokenizer == "words")
    index = EvidenceIndex.build(train_convs)  # kept even without evidence in prompts: the retrieval baseline needs it
    recipe = PromptRecipe(evidence_k=opts.evidence_k, max_history=history_seen(train_convs, opts.max_history),
                          max_evidence_tokens=opts.max_evidence_tokens)
    config = replace(default_config(opts.arch, tokenizer.vocab_size), **opts.model_overrides)
    model = build_model(config).to(device)
    logger.info("%s: %d params, vocab %d, %d train / %d val conversations (%d bad lines skipped), device %s",
                opts.arch, model.num_params(), tokenizer.vocab_size, len(train_convs), len(val_convs), skipped, device)

    try:  # the other ranks wait for rank 0 at a barrier in close(): let them go however it ends
        history, stats = run_training(model, tokenizer, train_convs, val_convs, opts, device, progress, dist, index, recipe)
        if not dist.is_main:  # rank 0 evaluates and writes the version
            return "", {"rank": dist.rank, "world_size": dist.world_size}
        with progress.alive(stage="evaluating"):
            metrics = final_metrics(model, tokenizer, val_convs, history, stats, opts, config, device, index, recipe)
            if opts.compare_current and registry.current() and val_convs:
                metrics["compare"] = compare_with(registry, registry.current(), val_convs, device, model, tokenizer, index,
                                                  recipe, metrics)
        metrics.update(skipped_lines=skipped, num_conversations=len(conversations), data_sha256=data_sha256(opts.data))
        metrics["train_seconds"] = stats["train_seconds"]
        metrics["world_size"] = dist.world_size
        metrics["total_seconds"] = round(time.monotonic() - started, 2)

        gate = metrics.pop("gate", None)
        with registry.staging() as staged:
            save_checkpoint(staged, model, tokenizer, index, recipe)
            Selection(**metrics["selection"]).save(staged)  # the trainer's, less the variants where they lost on validation
            if gate is not None:
                gate.save(staged)
            plot_loss(history, staged / LOSS_PLOT, title=f"{opts.arch} · {model.num_params() / 1e6:.2f} M params")
            (staged / METRICS).write_text(_json(metrics))  # the folder's name is the version
            if val_convs:  # scrubbed like the rest of the training data; two versions are compared on them (llmcore.sidebyside)
                write_conversations(staged / HELDOUT, val_convs)
            chats.write_fingerprints(staged / TRAINED, train_convs)  # a later version is compared with this one on the others
            with _signals_held():
                version = registry.commit(staged)
                if opts.promote:
                    registry.promote(version)
                metrics["version"] = version
                if opts.result_file:
                    write_atomic(Path(opts.result_file), _json(metrics))
        progress.write(stage="done", version=version, force=True)
        return version, metrics
    finally:
        dist.close()


def run_training(model: LanguageModel, tokenizer: Tokenizer, train_convs: list[Conversation], val_convs: list[Conversation],
                 opts: TrainOptions, device: torch.device, progress_file: ProgressFile | None = None,
                 dist: Distributed | None = None, index: EvidenceIndex | None = None,
                 recipe: PromptRecipe = PLAIN) -> tuple[History, dict]:
    """The loop: returns the loss history and throughput.

    Leaves the final weights in `model`, or the best-validation ones if validation got measurably worse since
    (a plateau is not a reason to forget what was learned on the training data, e.g. a knowledge base by heart).
    Validation stops a run early or takes it back only with MIN_VAL_ANSWERS held-out answers or more: on a
    handful (a small FAQ and a few operators' answers) its loss is noise, and going back to an early step
    forgets exactly what the run was for.
    """
    examples = make_turn_examples(train_convs, tokenizer, model.config.block_size, index, recipe, seed=opts.seed,
                                  question_loss=opts.question_loss)
    if not examples:
        raise ValueError("no training windows: the data has no assistant text to learn")
    dist = dist or Distributed()
    val_answers = sum(1 for c in val_convs for m in c.messages if m["role"] == "assistant" and m.get("weight", 1) != 0)
    judged = val_answers >= MIN_VAL_ANSWERS
    if val_convs and not judged:
        logger.info("%d held-out answers: too few to stop early or go back by; keeping the final weights", val_answers)
    rng = random.Random(opts.seed)  # the same on every rank: each takes its own share of the same batches
    batch_tokens = opts.batch_tokens or auto_batch_tokens(examples)
    steps_per_epoch = dist.steps(len(make_batches(examples, batch_tokens, tokenizer.pad_id)))
    total_steps = steps_per_epoch * opts.epochs if opts.epochs else None
    budget_s = opts.max_minutes * 60 if opts.max_minutes else None
    eval_every_s = max(MIN_EVAL_INTERVAL_S, budget_s / EVALS_PER_BUDGET) if budget_s else None  # else: every epoch
    peak_lr = default_lr(model.config) if opts.lr is None else opts.lr
    precision = resolve_precision(opts.precision, device)
    optimizer = make_optimizer(model, peak_lr, device, opts.weight_decay)
    trainee = dist.wrap(model)  # DistributedDataParallel across ranks, the model itself alone
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(opts.ema)) if opts.ema else None
    history, best = History(), {"loss": float("inf"), "state": None, "step": 0}
    step, tokens, bad_evals, epoch = 0, 0, 0, 0
    t0 = last_eval = time.monotonic()
    bar = tqdm(total=100, unit="%", disable=not opts.progress or not dist.is_main, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 15.0,  # a log file gets a line now and then, not every step
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    stop_reason = None
    model.train()
    try:
        while stop_reason is None:
            epoch += 1
            for x, y in dist.share(make_batches(examples, batch_tokens, tokenizer.pad_id, rng)):
                elapsed = time.monotonic() - t0
                progress = dist.agree(max(step / total_steps if total_steps else 0.0, elapsed / budget_s if budget_s else 0.0))
                if progress >= 1.0:
                    stop_reason = "epochs" if total_steps and step >= total_steps else "time"
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, progress, peak_lr)
                loss = train_step(trainee, optimizer, x.to(device), y.to(device), device, precision, opts.label_smoothing)
                if averaged is not None:
                    averaged.update_parameters(model)
                step += 1
                tokens += int((x != tokenizer.pad_id).sum())
                history.steps.append(step)
                history.train_loss.append(loss)
                bar.n = min(100.0, round(100 * progress, 1))
                bar.set_postfix_str(f"epoch {epoch} loss {loss:.3f} {tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
                bar.update(0)  # redraws at most every mininterval
                if progress_file is not None:
                    rate = progress / max(elapsed, 1e-9)
                    progress_file.write(stage="training", progress=round(progress, 4), epoch=epoch, step=step, loss=round(loss, 4),
                                        tokens_per_s=round(tokens / max(elapsed, 1e-9)), elapsed_s=round(elapsed, 1),
                                        eta_s=round((1 - progress) / rate, 1) if rate > 0 else None)
                if eval_every_s and dist.agree(float(time.monotonic() - last_eval >= eval_every_s)):  # every rank at the same step
                    bad_evals = validate(model, tokenizer, val_convs, history, best, step, bad_evals, index, recipe)
                    last_eval = time.monotonic()
                    if judged and dist.agree(float(bad_evals >= opts.patience)) >= 1:  # every rank stops at the same step
                        stop_reason = "early_stop"
                        break
            else:
                if not eval_every_s:  # epochs mode: validate at each epoch's end
                    bad_evals = validate(model, tokenizer, val_convs, history, best, step, bad_evals, index, recipe)
                    if judged and dist.agree(float(bad_evals >= opts.patience)) >= 1:  # every rank stops at the same step
                        stop_reason = "early_stop"
    finally:
        bar.close()
    train_seconds = time.monotonic() - t0
    tokens = dist.total(tokens)  # every rank's tokens: the throughput of the whole job
    if averaged is not None and step:  # the run ends with the average (validated below like the last weights would be)
        model.load_state_dict(averaged.module.state_dict())
    if not history.val_steps or history.val_steps[-1] != step:
        validate(model, tokenizer, val_convs, history, best, step, bad_evals, index, recipe)
    restored = judged and bool(history.val_loss) and history.val_loss[-1] > best["loss"] * (1 + KEEP_FINAL_TOLERANCE)
    if restored:  # validation got measurably worse: go back to the best weights
        model.load_state_dict(best["state"])
    return history, {"restored_best": restored,"train_seconds": round(train_seconds, 2), "steps": step, "epochs": epoch, "tokens": tokens,
                     "best_step": best["step"], "stop_reason": stop_reason,
                     "batch_tokens": batch_tokens, "peak_lr": peak_lr, "precision": precision, "val_answers": val_answers}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               precision: str, label_smoothing: float = 0.0) -> float:
    with autocast(device, precision):
        loss = model(x, y, IGNORE_INDEX, label_smoothing)  # forward with targets: the loss (through DDP's hooks when distributed)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def validate(model: LanguageModel, tokenizer: Tokenizer, val_convs: list[Conversation], history: History,
             best: dict, step: int, bad_evals: int, index: EvidenceIndex | None = None,
             recipe: PromptRecipe = PLAIN) -> int:
    """Record validation loss; keep the best weights; return the count of evaluations without improvement."""
    if not val_convs:  # nothing held out: the latest weights are the best we know
        best["state"], best["step"] = None, step
        return 0
    loss = loss_on(model, val_convs, tokenizer, index, recipe)["loss"]
    history.val_steps.append(step)
    history.val_loss.append(loss)
    if loss < best["loss"] - 1e-4:
        best.update(loss=loss, state=copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()}), step=step)
        return 0
    return bad_evals + 1


def final_metrics(model: LanguageModel, tokenizer: Tokenizer, val_convs: list[Conversation], history: History,
                  stats: dict, opts: TrainOptions, config: ModelConfig, device: torch.device,
                  index: EvidenceIndex | None = None, recipe: PromptRecipe = PLAIN) -> dict:
    model.eval()
    recent = history.train_loss[-20:]
    metrics = {
        "arch": config.arch,
        "num_params": model.num_params(),
        "vocab_size": tokenizer.vocab_size,
        "config": config.to_dict(),
        "train_loss": sum(recent) / len(recent) if recent else None,
        "val_loss": None, "val_ppl": None, "val_loss_per_char": None, "val_char_f1": None,
        "train_tokens_per_s": round(stats["tokens"] / max(stats["train_seconds"], 1e-9), 1),
        "steps": stats["steps"], "epochs": stats["epochs"], "best_step": stats["best_step"], "stop_reason": stats["stop_reason"],
        "batch_tokens": stats["batch_tokens"], "peak_lr": stats["peak_lr"], "precision": stats["precision"], "ema": opts.ema,
        "weight_decay": opts.weight_decay, "label_smoothing": opts.label_smoothing,
        "restored_best": stats["restored_best"],
        "val_answers": stats["val_answers"], "device": str(device), "seed": opts.seed, "tokenizer": opts.tokenizer,
        "prompt": recipe.to_dict(), "question_loss": opts.question_loss, "selection": opts.selection.to_dict(),
        "data": [str(Path(p)) for p in opts.data],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if val_convs:
        scores, scored = evaluate_turns(model, tokenizer, val_convs, limit=VAL_CHAR_F1_TURNS,
                                        repetition_penalty=BOT_REPETITION_PENALTY, index=index, recipe=recipe,
                                        selection=opts.selection)
        if opts.selection.variants:  # they pay on some versions and cost others (docs/benchmarks.md): kept where they win
            plain = replace(opts.selection, variants=0)
            params = SamplingParams(temperature=0.0, repetition_penalty=BOT_REPETITION_PENALTY, max_new_tokens=ANSWER_TOKENS)
            without = answer_turns(model, tokenizer, assistant_turns(val_convs)[:VAL_CHAR_F1_TURNS], params, index, recipe, plain)
            plain_f1 = sum(s.f1 for s in without) / max(len(without), 1)
            metrics["val_char_f1_by_variants"] = {str(opts.selection.variants): scores["char_f1"], "0": plain_f1}
            if plain_f1 >= scores["char_f1"]:
                metrics["selection"], scores["char_f1"], scored = plain.to_dict(), plain_f1, without
        metrics.update(val_loss=scores["loss"], val_ppl=scores["ppl"], val_loss_per_char=scores["loss_per_char"],
                       val_char_f1=scores["char_f1"], val_baseline_char_f1=scores["baseline_char_f1"],
                       val_char_f1_turns=scores["num_turns"])
        labels = [s.f1 >= RIGHT_F1 for s in scored]
        gate = Gate.fit([s.features for s in scored], labels)
        if gate is not None:
            metrics["gate"] = gate
            # the curve on answers the gate was not fitted on where there are enough (each half by the other's gate)
            held_out = cross_fitted_probabilities([s.features for s in scored], labels)
            metrics["val_gate_curve_cross_fitted"] = held_out is not None
            metrics["val_gate_curve"] = gate_curve(held_out or [gate.probability(s.features) for s in scored], labels)
    return metrics


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(opts: TrainOptions) -> dict:
    """Entry point for `python -m llmcore train`: signals abort cleanly, the summary goes to stdout."""
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        version, metrics = train(opts)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return metrics
