"""Model versions on disk: `DIR/v0001`, `DIR/v0002`, ... and `DIR/current`, the served one.

    reg = Registry("models")
    with reg.staging() as tmp:            # write a version into a temporary folder...
        save_checkpoint(tmp, model, tok)
        version = reg.commit(tmp)          # ...which appears complete, under the next free name
    reg.promote(version)                   # `current` moves atomically
    loaded = reg.load()                    # the current version: model, tokenizer, metrics

A version folder holds `model.pt` (weights and the `ModelConfig` that builds them), `tokenizer.json`,
`config.json`, `evidence.jsonl` (its training answers, which it retrieves from), `prompt.json` (how it
builds prompts), `select.json` (how it chooses its answer among candidates), `gate.json` (how likely an answer
is right), `metrics.json` and `loss.png`. Versions are
never overwritten; promote and rollback only move the `current` symlink. Every promotion is appended to
`promotions.jsonl`, which rollback reads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llmcore.gate import Gate
from llmcore.model import LanguageModel, ModelConfig, build_model
from llmcore.prompting import EVIDENCE_FILE, PLAIN, PromptRecipe
from llmcore.retrieval import EvidenceIndex
from llmcore.selection import GREEDY, Selection
from llmcore.tokenizer import Tokenizer, TokenizerError

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v([0-9]{4,})$")
STAGING_PREFIX = ".staging-"
CURRENT = "current"
WEIGHTS, TOKENIZER, CONFIG, METRICS, LOSS_PLOT = "model.pt", "tokenizer.json", "config.json", "metrics.json", "loss.png"
HELDOUT = "heldout.jsonl"  # the conversations the version held out of its training (llmcore.sidebyside)
TRAINED = "trained.bin"  # the fingerprints of those it trained on (llmcore.chats.fingerprint): a comparison leaves them out
CHECKPOINT_FORMAT = "kefu-checkpoint/1"
PROMOTIONS = "promotions.jsonl"  # every promotion, one JSON record a line; rollback reads it


class RegistryError(Exception):
    """A version that does not exist or cannot be loaded; the message names it."""


@dataclass
class LoadedModel:
    version: str
    model: LanguageModel
    tokenizer: Tokenizer
    metrics: dict
    index: EvidenceIndex | None = None  # the version's own training answers, for its evidence and baseline
    recipe: PromptRecipe = PLAIN
    gate: Gate | None = None  # answers' probability of being right (kefu.p_correct)
    selection: Selection = GREEDY  # how the answer is chosen among candidates (greedy alone before select.json)


def save_checkpoint(folder: Path, model: LanguageModel, tokenizer: Tokenizer, index: EvidenceIndex | None = None,
                    recipe: PromptRecipe | None = None) -> None:
    """Weights with the config that builds them, the tokenizer, and the evidence index and prompt recipe, into `folder`."""
    if index is not None:
        index.save(folder / EVIDENCE_FILE)
    if recipe is not None:
        recipe.save(folder)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "state_dict": state}, folder / WEIGHTS)
    tokenizer.save(folder / TOKENIZER)
    (folder / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")


def load_checkpoint(folder: Path, device: torch.device | str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """Rebuild exactly what the trainer saved; RegistryError naming the folder when that is impossible."""
    name = folder.name
    try:
        checkpoint = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise RegistryError(f"version {name}: no {WEIGHTS}") from exc
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise RegistryError(f"version {name}: corrupt checkpoint {WEIGHTS} ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RegistryError(f"version {name}: {WEIGHTS} is not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        tokenizer = Tokenizer.load(folder / TOKENIZER)
        config = ModelConfig.from_dict(checkpoint["config"])
        if config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model vocabulary {config.vocab_size} != tokenizer vocabulary {tokenizer.vocab_size}")
        model = build_model(config)
        model.load_state_dict(checkpoint["state_dict"])
    except (TokenizerError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise RegistryError(f"version {name}: incompatible checkpoint ({exc})") from exc
    return model.to(device).eval(), tokenizer


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise RegistryError(f"{version!r} is not a version name (v0001, v0002, ...)")
        return self.root / version

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        link = self.root / CURRENT
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        return target if VERSION_RE.match(target) and (self.root / target).is_dir() else None

    def metrics(self, version: str) -> dict:
        try:
            return json.loads((self.path(version) / METRICS).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"version {version}: cannot read {METRICS} ({exc})") from exc

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary folder inside the registry; removed on exit unless `commit` moved it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_staging()
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.root))
        tmp.chmod(0o755)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path) -> str:
        """Rename a complete staged folder to the next free version name (safe against concurrent trainers). Its files
        reach the disk first: after a power cut, `current` never names a version whose weights were still in the page
        cache (a truncated model.pt, and no server could start)."""
        for file in (f for f in staged.rglob("*") if f.is_file()):
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(staged)
        for _ in range(1000):
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
            try:
                os.rename(staged, self.root / version)  # fails if another trainer took the name first
            except OSError:
                if (self.root / version).exists():
                    continue
                raise
            _fsync_dir(self.root)
            return version
        raise RegistryError("could not find a free version name")

    def promote(self, version: str, rollback: bool = False) -> None:
        """Point `current` at `version` atomically (a new symlink renamed over the old one); recorded in
        promotions.jsonl (a rollback marked as one: it is not a step that a later rollback goes back over)."""
        if not (self.path(version) / WEIGHTS).is_file():
            raise RegistryError(f"version {version} does not exist in {self.root}")
        previous = self.current()
        tmp_link = self.root / f".{CURRENT}-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(version, tmp_link)
        os.replace(tmp_link, self.root / CURRENT)
        _fsync_dir(self.root)
        record = {"version": version, "previous": previous, "at": time.time(), **({"rollback": True} if rollback else {})}
        _append_line(self.root / PROMOTIONS, json.dumps(record))
        logger.info("%s %s (was %s)", "rolled back to" if rollback else "promoted", version, previous)

    def rollback_target(self) -> str:
        """The version that was current before the current one was promoted: v1 → v2 → v3, then rollbacks give v2,
        then v1 (a rollback's own record is skipped, or a second rollback would bring back the version just left)."""
        current = self.current()
        for entry in reversed(self._promotions()):
            previous = entry.get("previous")
            if not entry.get("rollback") and entry.get("version") == current and isinstance(previous, str) and previous != current:
                return previous
        raise RegistryError("nothing to roll back to: no earlier promotion recorded")

    def rollback(self) -> str:
        """Promote the version that was current before the current one (rollback_target)."""
        target = self.rollback_target()
        self.promote(target, rollback=True)
        return target

    def load(self, version: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
        version = version or self.current()
        if version is None:
            raise RegistryError(f"no current version in {self.root}; train one with --promote or run `models promote V`")
        folder = self.path(version)
        if not folder.is_dir():
            raise RegistryError(f"version {version} does not exist in {self.root}")
        model, tokenizer = load_checkpoint(folder, device)
        metrics = self.metrics(version) if (folder / METRICS).exists() else {}
        try:
            index = EvidenceIndex.load(folder / EVIDENCE_FILE) if (folder / EVIDENCE_FILE).exists() else None
            recipe = PromptRecipe.load(folder)
            gate = Gate.load(folder)
            selection = Selection.load(folder)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"version {version}: cannot read its evidence, prompt recipe or selection: {exc}") from exc
        return LoadedModel(version, model, tokenizer, metrics, index, recipe, gate, selection)

    def _promotions(self) -> list[dict]:
        """The records of promotions.jsonl, oldest first. A line that is not one (torn by a crash or a full disk
        mid-append, or edited by hand) is skipped with a warning: one bad line must not end every later rollback."""
        path = self.root / PROMOTIONS
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):  # a torn line, or a hand edit nested too deep
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                logger.warning("%s line %d is not a promotion record; skipped", path, number)
        return entries

    def _remove_abandoned_staging(self) -> None:
        """Staging folders of trainers that died without cleaning up (SIGKILL)."""
        for path in self.root.glob(f"{STAGING_PREFIX}*"):
            pid = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_line(path: Path, line: str) -> None:
    """Append one line and let it reach the disk. It starts on a line of its own even when a crash mid-append left
    the file ending in a torn line, which would otherwise swallow this record too."""
    created = not path.exists()
    with open(path, "a+b") as log:
        torn = False
        if log.seek(0, os.SEEK_END) > 0:
            log.seek(-1, os.SEEK_END)
            torn = log.read(1) != b"\n"
        log.write((b"\n" if torn else b"") + line.encode("utf-8") + b"\n")  # append mode: at the end, wherever we read
        log.flush()
        os.fsync(log.fileno())
    if created:
        _fsync_dir(path.parent)


def write_atomic(path: Path, text: str) -> None:
    """Replace a small file so that a reader sees the old content or the new, never half of one, also after a power
    cut (the content reaches the disk before the name does: a job.json left empty wedged the training API)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)
