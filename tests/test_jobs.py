"""Training jobs through the admin API: access, one at a time, progress, promotion, failures that change nothing."""
import asyncio
import json
import os
import shutil
import signal
import time

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from llmcore.jobs import JobManager
from llmcore.registry import Registry
from llmcore.server import create_app
from llmcore.settings import ServeSettings
from llmcore.worker import Worker

from .conftest import FAQ_PAIRS

TOKEN = "job-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 96}
DATA = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FAQ_PAIRS] * 2


@pytest.fixture
async def admin(tiny_models, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    worker = Worker(Registry(root), torch.device("cpu"), max_batch=4)
    client = TestClient(TestServer(create_app(ServeSettings(models=root, admin_token=TOKEN), worker)))
    await client.start_server()
    yield client, Registry(root)
    await client.close()


async def wait_for_end(client, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await (await client.get("/admin/train", headers=AUTH)).json()
        if job["status"] != "running":
            return job
        await asyncio.sleep(0.3)
    raise TimeoutError("training job did not end")


async def test_without_the_right_token_nothing_starts(admin):
    client, registry = admin
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await client.post("/admin/train", json={"conversations": DATA, "epochs": 1}, headers=headers)
        assert response.status == 401
    assert not (registry.root / "jobs").exists()


@pytest.mark.parametrize("body, fragment", [
    ({"conversations": DATA[:3], "epochs": 1}, "too little data"),
    ({"conversations": DATA, "arch": "gpt5", "epochs": 1}, "arch must be"),
    ({"conversations": DATA, "minutes": -3}, "minutes must be"),
    ({"conversations": DATA, "epochs": 1, "model": {"n_layer": "many"}}, "model overrides"),
    ({"conversations": "all of them"}, "expected"),
    ({"conversations": DATA, "epochs": 1, "model": ["n_layer"]}, "model overrides"),
    ({"conversations": DATA, "epochs": 1, "model": {"n_layer": True}}, "model overrides"),
    ({"conversations": DATA, "minutes": True}, "minutes must be"),
    ({"conversations": DATA, "epochs": 1.5}, "epochs must be"),
    ({"conversations": DATA + [{"messages": [{"role": "user", "content": "\ud800"}]}], "epochs": 1}, "valid Unicode"),
    ({"conversations": DATA, "arch": ["transformer"], "epochs": 1}, "arch must be"),
    ({"conversations": DATA, "epochs": 1, "request_id": "../../x"}, "request_id must be"),
    ({"conversations": DATA, "epochs": 1, "request_id": 7}, "request_id must be"),
])
async def test_bad_job_requests_are_refused(admin, body, fragment):
    client, registry = admin
    response = await client.post("/admin/train", json=body, headers=AUTH)
    assert response.status == 400 and fragment in (await response.json())["error"]["message"]
    assert registry.versions() == ["v0001"]


@pytest.mark.parametrize("body", [b'{"conversations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"conversations": [], "minutes": ' + b"1" * 5000 + b"}"])
async def test_training_bodies_nested_or_numbered_past_reading_are_refused(admin, body):
    client, registry = admin
    response = await client.post("/admin/train", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400 and "not valid JSON" in (await response.json())["error"]["message"]


def second_version(registry: Registry, weights: bytes | None = None) -> str:
    """v0002: a copy of v0001 (with other bytes for its weights, if given)."""
    shutil.copytree(registry.root / "v0001", registry.root / "v0002")
    if weights is not None:
        (registry.root / "v0002" / "model.pt").write_bytes(weights)
    return "v0002"


async def test_a_version_that_cannot_load_is_not_made_current(admin):
    """Moving `current` before loading left a registry on which no server could start again."""
    client, registry = admin
    version = second_version(registry, weights=b"not a checkpoint")
    response = await client.post("/admin/promote", json={"version": version}, headers=AUTH)
    assert response.status == 404 and "v0002" in (await response.json())["error"]["message"]
    assert registry.current() == "v0001" and Registry(registry.root).load().version == "v0001"
    answer = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": FAQ_PAIRS[0][0]}]})
    assert answer.status == 200 and (await answer.json())["model"] == "v0001"


async def test_a_job_whose_better_version_cannot_load_fails_and_changes_nothing(tmp_path, tiny_models):
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    registry = Registry(root)
    version = second_version(registry, weights=b"not a checkpoint")
    folder = root / "jobs" / "20260101-000000-004"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"id": folder.name, "status": "running", "pid": 2**22 + 12345, "started": 0}))
    (folder / "result.json").write_text(json.dumps({"version": version, "val_char_f1": 0.9, "compare": {"val_char_f1": 0.1}}))
    worker = Worker(registry, torch.device("cpu"), max_batch=4)
    await worker.start()
    try:
        jobs = JobManager(registry, on_promote=worker.promote)
        await jobs.check()  # the trainer ended with a better version, which cannot be loaded
        job = jobs.status()
        assert job["status"] == "failed" and version in job["error"]
        assert registry.current() == "v0001" and worker.version == "v0001"
    finally:
        await worker.stop()


async def test_a_promotion_that_runs_out_of_memory_fails_the_job_instead_of_leaving_it_running(tmp_path, tiny_models):
    """Loading a version beside the served one may raise something other than RegistryError (out of memory on a GPU):
    the job ended as "running", retried every second, and /admin/train answered 409 for good."""
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    registry = Registry(root)
    version = second_version(registry)
    folder = root / "jobs" / "20260101-000000-005"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"id": folder.name, "status": "running", "pid": 2**22 + 12346, "started": 0}))
    (folder / "result.json").write_text(json.dumps({"version": version, "val_char_f1": 0.9, "compare": {"val_char_f1": 0.1}}))

    async def out_of_memory(version):
        raise torch.OutOfMemoryError("CUDA out of memory")

    jobs = JobManager(registry, on_promote=out_of_memory)
    await jobs.check()
    job = jobs.status()
    assert job["status"] == "failed" and "OutOfMemoryError" in job["error"] and jobs.running() is None
    assert registry.current() == "v0001"


async def test_a_job_whose_pid_was_reused_after_a_restart_is_not_running(tmp_path, tiny_models):
    """After a restart on the same host, the trainer's pid may belong to another process (in a container, soon to the
    new server's own threads): it answered kill(pid, 0), and the job stayed "running" for good."""
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    registry = Registry(root)
    folder = root / "jobs" / "20260101-000000-006"
    folder.mkdir(parents=True)
    alive_but_other = {"id": folder.name, "status": "running", "pid": os.getpid(), "pid_started": 1, "started": 0}
    (folder / "job.json").write_text(json.dumps(alive_but_other))
    (folder / "train.log").write_text("")
    jobs = JobManager(registry)
    await jobs.check()  # (checked before any cancel: the old code would have signalled this test's own process group)
    assert jobs.status()["status"] == "failed" and jobs.running() is None and jobs.cancel() is None


async def test_a_promote_and_a_discard_pressed_together_decide_once(admin):
    client, registry = admin
    version = second_version(registry)
    folder = registry.root / "jobs" / "20260101-000000-003"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"id": folder.name, "status": "awaiting_decision", "version": version,
                                                 "pid": 1, "started": time.time()}))
    promote, discard = await asyncio.gather(client.post(f"/admin/jobs/{folder.name}/promote", headers=AUTH),
                                            client.post(f"/admin/jobs/{folder.name}/discard", headers=AUTH))
    assert sorted((promote.status, discard.status)) == [200, 409]
    status = json.loads((folder / "job.json").read_text())["status"]
    assert (status, registry.current()) in (("promoted", "v0002"), ("discarded", "v0001"))  # what it says is what happened


async def test_a_job_trains_reports_progress_and_is_promoted_when_better(admin):
    client, registry = admin
    unseen = [{"messages": [{"role": "user", "content": f"第{i}号问题"}, {"role": "assistant", "content": f"第{i}号回答。"}]}
              for i in range(40)]
    started = await client.post("/admin/train", json={"conversations": DATA + unseen, "epochs": 60.0, "model": TINY},  # JSON 60.0
                                headers=AUTH)
    assert started.status == 202 and (await started.json())["status"] == "running"
    second = await client.post("/admin/train", json={"conversations": DATA, "epochs": 1}, headers=AUTH)
    assert second.status == 409  # one at a time
    job = await wait_for_end(client)
    assert job["status"] in ("promoted", "awaiting_decision"), job
    assert job["progress"]["stage"] == "done" and job["result"]["compare"]["version"] == "v0001"
    held_out = (registry.root / job["version"] / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    learned = sum(any(q in line for q, _ in FAQ_PAIRS) for line in held_out)  # conversations v0001 trained on
    assert learned < len(held_out) and job["result"]["compare"].get("left_out", 0) == learned
    # the job's copy of customers' conversations goes when it ends (no /forget or retention reached it)
    assert not (registry.root / "jobs" / job["id"] / "data.jsonl").exists()
    assert job["version"] == "v0002" and registry.versions() == ["v0001", "v0002"]
    if job["status"] == "awaiting_decision":
        decided = await client.post(f"/admin/jobs/{job['id']}/promote", headers=AUTH)
        assert decided.status == 200
    assert registry.current() == "v0002"
    assert (await (await client.get("/healthz")).json())["version"] == "v0002"  # hot-reloaded
    curve = await client.get("/admin/versions/v0002/loss.png", headers=AUTH)
    assert curve.status == 200 and (await curve.read()).startswith(b"\x89PNG")
    rolled = await client.post("/admin/rollback", headers=AUTH)
    assert (await rolled.json())["current"] == "v0001" and registry.current() == "v0001"


async def test_a_killed_trainer_leaves_registry_and_current_as_they_were(admin):
    client, registry = admin
    big = {"n_layer": 4, "n_embd": 256, "n_head": 4, "block_size": 96}
    await client.post("/admin/train", json={"conversations": DATA, "minutes": 2, "model": big}, headers=AUTH)
    for _ in range(100):  # until the trainer is past start-up
        job = await (await client.get("/admin/train", headers=AUTH)).json()
        if (job.get("progress") or {}).get("stage") == "training":
            break
        await asyncio.sleep(0.2)
    os.killpg(job["pid"], signal.SIGKILL)
    job = await wait_for_end(client)
    assert job["status"] == "failed" and "exited" in job["error"]
    assert registry.versions() == ["v0001"] and registry.current() == "v0001"
    assert not (registry.root / "jobs" / job["id"] / "data.jsonl").exists()
    assert not any(p.name.startswith(".") for p in registry.root.iterdir() if p.name != ".gitignore")  # no staging left


async def test_a_restarted_server_finds_a_job_that_ended_while_it_was_down(tmp_path, tiny_models):
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    folder = root / "jobs" / "20260101-000000-001"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("epoch 3 ...\n")
    (folder / "job.json").write_text(json.dumps({"id": folder.name, "status": "running", "pid": 2**22 + 12345, "started": 0}))
    jobs = JobManager(Registry(root))
    await jobs.check()
    job = jobs.status()
    assert job["status"] == "failed" and "server was down" in job["error"]
    assert Registry(root).current() == "v0001"


async def test_another_hosts_running_job_is_left_to_that_host(tmp_path, tiny_models):
    """Replicas sharing a models folder: a trainer on another host is not this replica's to judge."""
    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    folder = root / "jobs" / "20260101-000000-002"
    folder.mkdir(parents=True)
    job = {"id": folder.name, "status": "running", "pid": 2**22 + 12345, "host": "elsewhere", "started": time.time()}
    (folder / "job.json").write_text(json.dumps(job))
    await JobManager(Registry(root)).check()
    assert JobManager(Registry(root)).status()["status"] == "running"
    (folder / "job.json").write_text(json.dumps({**job, "started": time.time() - 3600}))  # its host went away long ago
    await JobManager(Registry(root)).check()
    job = JobManager(Registry(root)).status()
    assert job["status"] == "failed" and "stopped reporting" in job["error"]


async def test_a_torn_job_file_or_a_path_for_an_id_answers_cleanly(admin):
    """A job.json left empty by a power cut answered GET /admin/train 500 and every start 400, for good; an id such as
    "../../elsewhere" read and rewrote a job.json outside the jobs folder; a job named by a local clock that went back
    hid the newest one."""
    client, registry = admin
    jobs = registry.root / "jobs"
    for name, started in (("20261203-120000-001", 100.0), ("20261203-110000-002", 200.0)):  # the second started later
        (jobs / name).mkdir(parents=True)
        (jobs / name / "job.json").write_text(json.dumps({"id": name, "status": "done", "started": started}))
    (jobs / "20261203-130000-003").mkdir()
    (jobs / "20261203-130000-003" / "job.json").write_text("")  # torn
    outside = registry.root.parent / "elsewhere"
    outside.mkdir()
    (outside / "job.json").write_text(json.dumps({"id": "../../elsewhere", "status": "running"}))
    latest = await client.get("/admin/train", headers=AUTH)
    assert latest.status == 200 and (await latest.json())["id"] == "20261203-110000-002"
    for decision in ("promote", "discard"):
        response = await client.post(f"/admin/jobs/..%2F..%2Felsewhere/{decision}", headers=AUTH)
        assert response.status == 409 and "not awaiting" in (await response.json())["error"]["message"], decision
    assert json.loads((outside / "job.json").read_text())["status"] == "running"


async def test_two_servers_on_one_registry_start_one_trainer(tmp_path, tiny_models, monkeypatch):
    """Two llmcore replicas sharing a registry each found no job running and started two trainers; the start is now
    held by a lock on the jobs folder, so the second finds the first's job running."""
    from concurrent.futures import ThreadPoolExecutor

    from llmcore.jobs import JobBusy

    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    replicas = [JobManager(Registry(root)), JobManager(Registry(root))]  # each its own in-process lock, as two processes
    slow_start = JobManager._start

    def start(jobs: JobManager):
        try:
            return jobs.start(DATA, epochs=1, model_overrides=TINY)
        except JobBusy as exc:
            return exc

    def slower(self, *args):  # both check before either has written its job: the race the lock closes
        time.sleep(0.5)
        return slow_start(self, *args)

    monkeypatch.setattr(JobManager, "_start", slower)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(start, replicas))
    assert sorted(type(r).__name__ for r in results) == ["JobBusy", "dict"]
    started = next(r for r in results if isinstance(r, dict))
    os.killpg(started["pid"], signal.SIGKILL)
