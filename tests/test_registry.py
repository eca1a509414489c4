"""Registry: complete versions only, atomic promote, rollback, clear errors for damaged checkpoints."""
import os

import pytest
import torch

from llmcore.model import ModelConfig, build_model
from llmcore.registry import CURRENT, WEIGHTS, Registry, RegistryError, save_checkpoint
from llmcore.tokenizer import Tokenizer


@pytest.fixture
def parts():
    tok = Tokenizer.train(["退货 refund"], min_freq=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="lstm", vocab_size=len(tok), n_layer=1, n_embd=16, n_head=1))
    return model, tok


def add_version(registry: Registry, model, tok) -> str:
    with registry.staging() as staged:
        save_checkpoint(staged, model, tok)
        (staged / "metrics.json").write_text('{"arch": "lstm"}')
        return registry.commit(staged)


def test_versions_are_numbered_and_never_overwritten(tmp_path, parts):
    registry = Registry(tmp_path)
    assert [add_version(registry, *parts) for _ in range(3)] == ["v0001", "v0002", "v0003"]
    assert registry.versions() == ["v0001", "v0002", "v0003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_a_versions_files_reach_the_disk_before_it_gets_its_name(tmp_path, parts, monkeypatch):
    """A power cut after the rename must not leave `current` naming a version whose weights were still in memory."""
    import llmcore.registry as module

    events, fsync, rename = [], os.fsync, os.rename

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def renamed(src, dst):
        events.append(("rename", str(dst)))
        return rename(src, dst)

    monkeypatch.setattr(module.os, "fsync", synced)
    monkeypatch.setattr(module.os, "rename", renamed)
    add_version(Registry(tmp_path), *parts)
    at = events.index(("rename", str(tmp_path / "v0001")))
    synced_first = {os.path.basename(path) for kind, path in events[:at] if kind == "fsync"}
    assert {WEIGHTS, "metrics.json"} <= synced_first


def test_a_failed_write_leaves_no_version(tmp_path, parts):
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError):
        with registry.staging() as staged:
            save_checkpoint(staged, *parts)
            raise RuntimeError("disk full")
    assert registry.versions() == [] and list(tmp_path.iterdir()) == []


def test_staging_left_by_a_killed_trainer_is_cleaned_up(tmp_path, parts):
    abandoned = tmp_path / ".staging-999999999-abc"  # no such pid
    abandoned.mkdir(parents=True)
    add_version(Registry(tmp_path), *parts)
    assert not abandoned.exists()


def test_promote_moves_current_and_load_returns_the_same_model(tmp_path, parts):
    model, tok = parts
    registry = Registry(tmp_path)
    add_version(registry, model, tok)
    v2 = add_version(registry, model, tok)
    assert registry.current() is None
    registry.promote(v2)
    assert registry.current() == v2 and os.readlink(tmp_path / CURRENT) == v2
    loaded = registry.load()
    assert loaded.version == v2 and loaded.tokenizer.tokens == tok.tokens
    idx = torch.tensor([[1, 2, 3]])
    assert torch.allclose(loaded.model(idx), model.eval()(idx))


def test_rollback_returns_to_the_previous_current(tmp_path, parts):
    registry = Registry(tmp_path)
    v1, v2, v3 = (add_version(registry, *parts) for _ in range(3))
    registry.promote(v1)
    registry.promote(v3)
    assert registry.rollback() == v1 and registry.current() == v1


def test_rollbacks_go_back_step_by_step_not_back_and_forth(tmp_path, parts):
    registry = Registry(tmp_path)
    v1, v2, v3 = (add_version(registry, *parts) for _ in range(3))
    for version in (v1, v2, v3):
        registry.promote(version)
    assert registry.rollback() == v2 and registry.rollback() == v1  # a second rollback did bring v3 back
    with pytest.raises(RegistryError):
        registry.rollback()
    registry.promote(v3)  # promoted again by hand: a rollback leaves it for the one before
    assert registry.rollback() == v1


def test_rollback_without_history_and_unknown_versions_are_errors(tmp_path, parts):
    registry = Registry(tmp_path)
    add_version(registry, *parts)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(RegistryError, match="v0042 does not exist"):
        registry.promote("v0042")
    with pytest.raises(RegistryError, match="not a version name"):
        registry.promote("../etc")
    with pytest.raises(RegistryError, match="no current version"):
        registry.load()


def test_corrupt_checkpoint_names_the_version(tmp_path, parts):
    registry = Registry(tmp_path)
    version = add_version(registry, *parts)
    (tmp_path / version / WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RegistryError, match=f"version {version}: corrupt checkpoint"):
        registry.load(version)


def test_incompatible_checkpoint_names_the_version(tmp_path, parts):
    model, _ = parts
    registry = Registry(tmp_path)
    other_tok = Tokenizer.train(["完全不同的词表 with other words"], min_freq=1)
    with registry.staging() as staged:
        save_checkpoint(staged, model, other_tok)  # vocabulary sizes disagree
        version = registry.commit(staged)
    with pytest.raises(RegistryError, match=f"version {version}: incompatible checkpoint"):
        registry.load(version)


def test_a_torn_promotion_record_is_skipped_and_the_next_starts_on_its_own_line(tmp_path, parts, caplog):
    """A crash mid-append leaves a partial line: rollback skips it, and the next promotion is not glued onto it."""
    registry = Registry(tmp_path)
    v1, v2, v3 = (add_version(registry, *parts) for _ in range(3))
    registry.promote(v1)
    registry.promote(v2)
    with open(tmp_path / "promotions.jsonl", "a") as log:
        log.write('[1, 2]\n{"version": "v0001", "previous": "v00')
    assert registry.rollback_target() == v1 and "not a promotion record" in caplog.text
    registry.promote(v3)
    assert (tmp_path / "promotions.jsonl").read_text().splitlines()[-2] == '{"version": "v0001", "previous": "v00'
    assert registry.rollback() == v2


def test_a_promotion_record_reaches_the_disk(tmp_path, parts, monkeypatch):
    import llmcore.registry as module

    synced, fsync = [], os.fsync
    monkeypatch.setattr(module.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    registry = Registry(tmp_path)
    registry.promote(add_version(registry, *parts))
    assert str(tmp_path / "promotions.jsonl") in synced


def test_the_command_line_promotes_and_rolls_back_only_to_a_version_that_loads(tmp_path, parts, capsys):
    """`llmcore models promote` checked only that model.pt existed: a torn version became current and `llmcore serve`
    could not start. Now it is refused and current stays; a good one is promoted, and rolled back from."""
    from llmcore.__main__ import main

    registry = Registry(tmp_path)
    first, torn, good = (add_version(registry, *parts) for _ in range(3))
    registry.promote(first)
    (tmp_path / torn / WEIGHTS).write_bytes(b"\x00garbage" * 10)
    assert main(["models", "promote", torn, "--models", str(tmp_path)]) != 0
    assert registry.current() == first and f"version {torn}" in capsys.readouterr().err
    assert main(["models", "promote", good, "--models", str(tmp_path)]) == 0 and registry.current() == good
    assert main(["models", "rollback", "--models", str(tmp_path)]) == 0 and registry.current() == first
