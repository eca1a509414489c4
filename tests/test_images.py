"""Smoke tests of the built container images and of deploy/docker-compose.yml brought up for real.

    make images          # builds them (deploy/scripts/images.sh)
    make test-images     # this file: pytest -m images tests/test_images.py (a few minutes; not part of `make test`)

The engine is Docker where its daemon answers, else podman (with deploy/podman/containers.conf); compose is `docker
compose`, else podman-compose. Where the compose file's stock redis and nginx images are not there, the stand-ins of
deploy/standins/ take their place. Every container, volume and network is named after this run and removed after it.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.botapi import USER_ID, text_update
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)
BOT_IMAGE, LLMCORE_IMAGE, CUDA_IMAGE = f"kefu-bot:{VERSION}", f"kefu-llmcore:{VERSION}", f"kefu-llmcore:{VERSION}-cuda"
STANDINS = {"redis": "localhost/kefu-standin-redis:7", "nginx": "localhost/kefu-standin-nginx:1"}
APP_UID = "10001"
FAQ_QUESTION, FAQ_ANSWER_PART = "怎么在青禾商城下单？", "立即购买"  # the demo FAQ's first entry
TINY_MODEL = ["--epochs", "1", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--val-fraction", "0"]
WEBHOOK_SECRET = "smoke-secret-" + uuid.uuid4().hex[:8]
BOT_TOKEN = "123456:SMOKE-TOKEN"
RUN = f"kefu-smoke-{os.getpid()}"

pytestmark = [pytest.mark.images, pytest.mark.timeout(900)]

# tests/botapi.py's Bot API server as a compose service: on all interfaces, with GET /_calls listing what the bot did
BOTAPI_MAIN = """
import asyncio, json, sys
from aiohttp import web
from tests.botapi import BotApiServer

async def main():
    api = BotApiServer(sys.argv[1])
    app = web.Application()
    app.router.add_get("/_calls", lambda request: web.json_response(api.calls, dumps=lambda o: json.dumps(o, default=str)))
    app.router.add_route("*", "/{tail:.*}", api._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 8081).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


# ------------------------------------------------------------------------------------------------------------ engine


@functools.cache
def engine_name() -> str:
    """docker where its daemon answers, else podman (as deploy/scripts/images.sh decides)."""
    docker = shutil.which("docker")
    return "docker" if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0 else "podman"


def run(*args: str, timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """A command (podman with the project's containers.conf); with `check`, a failure fails the test with its output."""
    env = {"CONTAINERS_CONF": str(DEPLOY / "podman" / "containers.conf"), **os.environ}
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if check:
        assert result.returncode == 0, f"{' '.join(args)[:300]}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def engine(*args: str, **kwargs) -> subprocess.CompletedProcess:
    if not shutil.which(engine_name()):
        pytest.fail(f"{engine_name()} is not installed: `make test-images` installs it (.ci/install-podman)")
    return run(engine_name(), *args, **kwargs)


def has_image(image: str) -> bool:
    return engine("image", "inspect", image, check=False).returncode == 0


def need_image(image: str) -> str:
    if not has_image(image):
        pytest.fail(f"{image} is not built: run `make images` first")
    return image


def image_config(image: str) -> dict:
    """The image's configuration; its Healthcheck where Docker keeps it (podman shows it beside Config)."""
    inspected = json.loads(engine("image", "inspect", need_image(image)).stdout)[0]
    return {"Healthcheck": inspected.get("Healthcheck"), **inspected["Config"]}


def stock_or_standin(service: str) -> str:
    """The compose file's image for redis or nginx where it is here, else its stand-in (`make images` builds those)."""
    stock = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"][service]["image"]
    return stock if has_image(stock) else need_image(STANDINS[service])


def healthcheck(container: str, timeout: float = 120) -> None:
    """The image's HEALTHCHECK passes: `podman healthcheck run` (podman runs it only when asked), Docker's own status."""
    deadline = time.monotonic() + timeout
    while True:
        if engine_name() == "podman":
            result = engine("healthcheck", "run", container, check=False)
            ok, detail = result.returncode == 0, result.stdout + result.stderr
        else:
            detail = engine("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
            ok = detail == "healthy"
        if ok:
            return
        assert time.monotonic() < deadline, f"{container}: healthcheck still failing ({detail.strip()[-300:]})\n{logs(container)}"
        time.sleep(2)


def logs(container: str) -> str:
    result = engine("logs", "--tail", "40", container, check=False)
    return (result.stdout + result.stderr)[-3000:]


def http(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    context = ssl._create_unverified_context() if url.startswith("https") else None  # the smoke test's self-signed cert
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http(url: str, timeout: float, container: str = "", **kwargs) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http(url, **kwargs)
            if status < 500:
                return status, body
        except OSError:
            status, body = 0, b""
        assert time.monotonic() < deadline, f"{url}: {status} {body[:200]!r}\n{logs(container) if container else ''}"
        time.sleep(1)


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    name = f"{RUN}-net"
    engine("network", "create", name)
    yield name
    engine("network", "rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def containers() -> Iterator[list[str]]:
    """Names of the containers this module started: removed at the end."""
    started: list[str] = []
    yield started
    for name in reversed(started):
        engine("rm", "-f", name, check=False)


# ------------------------------------------------------------------------------------------------------------ images


def test_bot_image_runs_the_cli_without_torch():
    result = engine("run", "--rm", need_image(BOT_IMAGE), "python", "-m", "bot", "--help")
    assert "shell" in result.stdout and "run" in result.stdout
    lean = engine("run", "--rm", BOT_IMAGE, "python", "-c", "import importlib.util; print(importlib.util.find_spec('torch'))")
    assert lean.stdout.strip() == "None", "the bot image must not carry torch"


@pytest.mark.parametrize("image", [BOT_IMAGE, LLMCORE_IMAGE, CUDA_IMAGE])
def test_images_run_as_a_non_root_user_with_a_healthcheck(image: str):
    if image == CUDA_IMAGE and not has_image(image):
        pytest.skip(f"{image} is not built here (`make images` builds it: gigabytes of CUDA wheels)")
    config = image_config(image)
    assert config["User"].split(":")[0] == APP_UID
    assert "/healthz" in " ".join((config["Healthcheck"] or {}).get("Test", [])), "HEALTHCHECK lost: build with --format docker"
    assert engine("run", "--rm", image, "id", "-u").stdout.strip() == APP_UID


def test_cuda_image_carries_torch_built_for_cuda():
    if not has_image(CUDA_IMAGE):
        pytest.skip(f"{CUDA_IMAGE} is not built here")
    probe = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    version, cuda, available = engine("run", "--rm", CUDA_IMAGE, "python", "-c", probe).stdout.split()
    assert cuda != "None", f"torch {version} in {CUDA_IMAGE} is a CPU build"
    assert engine("run", "--rm", CUDA_IMAGE, "python", "-m", "llmcore", "serve", "--help").returncode == 0


@pytest.fixture(scope="module")
def llmcore(network: str, containers: list[str]) -> Iterator[str]:
    """llmcore serving a tiny model trained into a fresh volume; yields its URL on the host."""
    volume = f"{RUN}-models"
    engine("volume", "create", volume)
    try:
        engine("run", "--rm", "-v", f"{volume}:/models", need_image(LLMCORE_IMAGE),
               "python", "-m", "llmcore", "train", "--models", "/models", *TINY_MODEL, "--promote", "--no-progress", timeout=600)
        name = f"{RUN}-llmcore"
        port = free_port()
        engine("run", "-d", "--name", name, "--network", network, "--network-alias", "llmcore", "-v", f"{volume}:/models",
               "-p", f"127.0.0.1:{port}:8700", LLMCORE_IMAGE)
        containers.append(name)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout=120, container=name)
        yield url
    finally:
        for name in [c for c in containers if c.endswith("-llmcore")]:
            engine("rm", "-f", name, check=False)
            containers.remove(name)
        engine("volume", "rm", "-f", volume, check=False)


def test_llmcore_serves_the_model_it_trained_into_a_volume(llmcore: str):
    assert http(f"{llmcore}/healthz")[0] == 200
    status, body = http(f"{llmcore}/v1/models")
    assert status == 200
    [model] = json.loads(body)["data"]
    status, body = http(f"{llmcore}/v1/chat/completions", {"model": model["id"], "max_tokens": 16, "temperature": 0,
                                                          "messages": [{"role": "user", "content": FAQ_QUESTION}]})
    assert status == 200, body
    answer = json.loads(body)["choices"][0]
    assert answer["message"]["role"] == "assistant" and answer["finish_reason"] in ("stop", "length")
    healthcheck(f"{RUN}-llmcore")


def test_bot_shell_answers_a_faq_question_through_redis_and_llmcore(llmcore: str, network: str, containers: list[str]):
    redis = f"{RUN}-redis"
    engine("run", "-d", "--name", redis, "--network", network, "--network-alias", "redis", stock_or_standin("redis"),
           "redis-server", "--appendonly", "yes")
    containers.append(redis)
    deadline = time.monotonic() + 30
    while engine("exec", redis, "redis-cli", "ping", check=False).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, logs(redis)
        time.sleep(0.5)
    result = engine("run", "-i", "--rm", "--network", network, "-e", "REDIS_URL=redis://redis:6379/0",
                    "-e", "LLMCORE_URL=http://llmcore:8700", need_image(BOT_IMAGE),
                    "python", "-m", "bot", "shell", "--var", "/tmp/kefu", input=FAQ_QUESTION + "\n", timeout=180)
    assert FAQ_ANSWER_PART in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"FAQ entries: [1-9]", result.stdout), "the demo FAQ should be seeded into the empty Redis"


# ----------------------------------------------------------------------------------------------------------- compose


class Override(list):
    """A list that replaces the compose file's list instead of adding to it (the Compose specification's !override)."""


class OverrideDumper(yaml.SafeDumper):
    pass


OverrideDumper.add_representer(Override, lambda dumper, value: dumper.represent_sequence("!override", list(value)))


def compose_command() -> list[str]:
    if engine_name() == "docker" and run("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    found = Path(sys.executable).parent / "podman-compose"
    if not found.exists():
        pytest.fail("podman-compose is missing: `make test-images` installs it (pip)")
    return [str(found)]


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """deploy/docker-compose.yml as it is, plus an override for the test: settings of its own (.env), a self-signed
    certificate, loopback ports, the Bot API server of tests/botapi.py as a service, a shorter demo training, stand-ins
    for stock images that are not here. Yields the ports and the compose command. KEFU_KEEP_STACK=1 leaves it running
    (then `<compose command> down -v` by hand, with the same two files)."""
    tmp = tmp_path_factory.mktemp("compose")
    spec = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    images = {service: stock_or_standin(service) for service in ("redis", "nginx")} | {"botapi": need_image(BOT_IMAGE)}
    project = f"{RUN}-compose"
    https_port, botapi_port = free_port(), free_port()
    (tmp / "certs").mkdir()
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-keyout", str(tmp / "certs" / "privkey.pem"), "-out", str(tmp / "certs" / "fullchain.pem"))
    os.chmod(tmp / "certs" / "privkey.pem", 0o644)  # read by nginx's master as root; a throwaway key
    (tmp / ".env").write_text(
        f"TELEGRAM_BOT_TOKEN={BOT_TOKEN}\nWEBHOOK_SECRET={WEBHOOK_SECRET}\nWEBHOOK_URL=https://localhost/telegram/webhook\n"
        "TELEGRAM_API_BASE=http://botapi:8081\nLLMCORE_ADMIN_TOKEN=smoke-admin\n", encoding="utf-8")
    site = (DEPLOY / "nginx" / "kefu.conf").read_text(encoding="utf-8")
    override: dict = {"services": {}}
    services = override["services"]
    if engine_name() == "podman":
        # kefu.conf's resolver is Docker's embedded DNS (127.0.0.11); podman's is on the network's gateway
        network = f"{project}-net"
        engine("network", "create", network)
        gateway = json.loads(engine("network", "inspect", network).stdout)[0]["subnets"][0]["gateway"]
        site, count = re.subn(r"resolver 127\.0\.0\.11 ", f"resolver {gateway} ", site)
        assert count >= 1, "kefu.conf should name Docker's resolver"  # in each server block (the bot's, the console's)
        override["networks"] = {"default": {"name": network, "external": True}}
    (tmp / "kefu.conf").write_text(site, encoding="utf-8")
    train = spec["services"]["train-demo"]["command"]
    assert "--max-minutes 3" in train[-1]
    for service in ("redis", "nginx"):
        if images[service] != spec["services"][service]["image"]:
            services[service] = {"image": images[service]}
    services["train-demo"] = {"command": Override([*train[:-1], train[-1].replace("--max-minutes 3", "--max-minutes 0.3")])}
    for service in ("llmcore", "bot", "console"):
        services[service] = {"env_file": Override([str(tmp / ".env")])}
    services["bot"]["depends_on"] = {"botapi": {"condition": "service_started"}}
    services["botapi"] = {"image": images["botapi"], "working_dir": "/srv", "volumes": [f"{REPO / 'tests'}:/srv/tests:ro"],
                          "command": ["python", "-c", BOTAPI_MAIN, BOT_TOKEN], "ports": [f"127.0.0.1:{botapi_port}:8081"],
                          "healthcheck": {"disable": True}, "init": True}
    services.setdefault("nginx", {}).update({
        "ports": Override([f"127.0.0.1:{https_port}:8443"]),
        "volumes": Override([f"{tmp / 'kefu.conf'}:/etc/nginx/conf.d/default.conf:ro", f"{tmp / 'certs'}:/etc/nginx/certs:ro"])})
    (tmp / "override.yml").write_text(yaml.dump(override, Dumper=OverrideDumper, allow_unicode=True, sort_keys=False))
    command = [*compose_command(), "-p", project, "-f", str(COMPOSE), "-f", str(tmp / "override.yml")]
    stack = {"command": command, "https": https_port, "botapi": botapi_port, "project": project}
    try:
        stack["started"] = time.monotonic()
        run(*command, "up", "-d", timeout=600)
        yield stack
    finally:
        if os.environ.get("KEFU_KEEP_STACK") != "1":
            run(*command, "down", "-v", timeout=300, check=False)
            if engine_name() == "podman":
                engine("network", "rm", "-f", f"{project}-net", check=False)


def container_of(stack: dict, service: str) -> str:
    names = engine("ps", "-a", "--filter", f"label=com.docker.compose.project={stack['project']}",
                   "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").stdout.split()
    assert names, f"no container for {service}"
    return names[0]


def bot_calls(stack: dict) -> list[tuple[str, dict]]:
    status, body = http(f"http://127.0.0.1:{stack['botapi']}/_calls")
    return json.loads(body) if status == 200 else []


def test_compose_stack_answers_a_webhook_through_nginx(compose_stack: dict):
    stack = compose_stack
    url = f"https://127.0.0.1:{stack['https']}/telegram/webhook"
    # the bot is up once it has set its webhook (after train-demo, llmcore and Redis)
    deadline = time.monotonic() + 420
    while not any(method == "setWebhook" for method, _ in bot_calls(stack)):
        assert time.monotonic() < deadline, "the bot never called setWebhook\n" + logs(container_of(stack, "bot"))
        time.sleep(2)
    webhook = next(params for method, params in bot_calls(stack) if method == "setWebhook")
    assert webhook["url"] == "https://localhost/telegram/webhook" and webhook["secret_token"] == WEBHOOK_SECRET

    update = {"update_id": int(time.time()), **text_update(FAQ_QUESTION)}
    assert http(url, update)[0] == 403, "a webhook POST without the secret must be refused"
    status, body = wait_http(url, timeout=60, container=container_of(stack, "nginx"), body=update,
                             headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
    assert status == 200, body
    deadline = time.monotonic() + 60
    while True:
        answers = [p.get("text", "") for m, p in bot_calls(stack) if m == "sendMessage" and p.get("chat_id") == USER_ID]
        if any(FAQ_ANSWER_PART in text for text in answers):
            break
        assert time.monotonic() < deadline, f"no FAQ answer reached the Bot API: {answers}\n{logs(container_of(stack, 'bot'))}"
        time.sleep(1)
    print(f"compose up to the FAQ answer through nginx: {time.monotonic() - stack['started']:.0f} s")


def test_compose_stack_is_healthy_and_keeps_redis_on_a_volume(compose_stack: dict):
    stack = compose_stack
    for service in ("redis", "llmcore", "bot", "nginx"):
        healthcheck(container_of(stack, service), timeout=180)
    train = container_of(stack, "train-demo")
    assert engine("inspect", "--format", "{{.State.ExitCode}}", train).stdout.strip() == "0", logs(train)
    redis = container_of(stack, "redis")
    assert engine("exec", redis, "redis-cli", "config", "get", "appendonly").stdout.split() == ["appendonly", "yes"]
    mounts = json.loads(engine("inspect", "--format", "{{json .Mounts}}", redis).stdout)
    assert any(m["Destination"] == "/data" and m["Type"] == "volume" for m in mounts), mounts
    llmcore = container_of(stack, "llmcore")
    assert engine("exec", llmcore, "id", "-u").stdout.strip() == APP_UID
