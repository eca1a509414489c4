"""`python -m bot up` (what `make run` runs): a private Redis with AOF under var/, llmcore serve, the terminal
chat on the same stack; Ctrl-C/SIGTERM stop every child; a second run finds the data again."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def up(models, var, stdin=subprocess.PIPE) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLMCORE_URL", "TELEGRAM_BOT_TOKEN", "WEBHOOK_URL")}
    return subprocess.Popen([sys.executable, "-m", "bot", "up", "--models", str(models), "--var", str(var)], cwd=REPO, env=env,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def chat(models, var, lines: str) -> str:
    """The terminal's output of one `bot up` that reads LINES and stops at their end."""
    process = up(models, var)
    out, _ = process.communicate(lines, timeout=120)
    assert process.returncode == 0, out[-3000:]
    return out


@pytest.fixture
def stack_dirs(tiny_models, tmp_path) -> tuple[Path, Path]:
    """A models folder holding the tiny model, and an empty var folder."""
    models, var = tmp_path / "models", tmp_path / "var"
    shutil.copytree(tiny_models, models, symlinks=True)
    return models, var


def bot_log(var) -> str:
    return (var / "log" / "bot.log").read_text(encoding="utf-8")


def children_of(var) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(var)], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


def test_up_answers_in_the_terminal_and_a_second_run_finds_its_data(stack_dirs):
    models, var = stack_dirs
    out = chat(models, var, "怎么退货\n" + "客服电话是多少？\n")
    assert "No TELEGRAM_BOT_TOKEN" in out and "loaded" in bot_log(var) and "demo entries" in bot_log(var)
    answers = [line for line in out.splitlines() if "kefu> " in line]
    assert any("申请售后" in a for a in answers), out[-3000:]  # the demo FAQ's answer about returns
    assert len(answers) >= 2
    assert (var / "redis" / "appendonlydir").is_dir() and children_of(var) == []
    assert "申请售后" in chat(models, var, "怎么退货\n")
    assert bot_log(var).count("demo entries") == 1  # the FAQ came back from the AOF: not seeded again
    assert children_of(var) == []


def test_the_terminal_chat_shows_the_conversation_and_logs_go_to_var_log(stack_dirs):
    models, var = stack_dirs
    out = chat(models, var, "怎么退货\n" + "/retrain\n")
    assert out.count("Log: ") == 1
    shown = out.split(f"Log: {var / 'log' / 'bot.log'} (warnings and errors also show here).", 1)[1]
    assert "kefu> " in shown and "申请售后" in shown and "Not allowed" in shown, out[-3000:]
    assert " INFO " not in shown, shown  # e.g. "the FAQ was empty: loaded ... demo entries", "redis stopped"
    assert "WARNING bot.admin: audit: user 10000" in shown  # the /retrain of a non-admin
    log = bot_log(var)
    assert "INFO bot.app: the FAQ was empty: loaded" in log and "INFO bot.stack: redis stopped" in log
    assert "WARNING bot.admin: audit: user 10000" in log


def test_up_starts_the_console_and_prints_a_login_link_that_works(stack_dirs):
    import re
    import urllib.error
    import urllib.request

    models, var = stack_dirs
    process = up(models, var)
    lines = []
    for line in iter(process.stdout.readline, ""):
        lines.append(line)
        if "Kefu shell" in line:
            break
    out = "".join(lines)
    base = re.search(r"Console: (http://\S+)", out).group(1)
    link = re.search(r"Log in to it .*: (http://\S+/login/\S+)", out).group(1)
    assert link.startswith(base + "/login/")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    inbox = opener.open(urllib.request.Request(link, data=b"", method="POST"), timeout=10)  # the login button; then the inbox
    assert inbox.status == 200 and "local admin" in inbox.read().decode()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CONSOLE_URL", "CONSOLE_LISTEN")}
    another = subprocess.run([sys.executable, "-m", "bot", "console", "--link", "--var", str(var)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60).stdout.strip()  # as the printed hint says
    assert another.startswith(base + "/login/") and another != link
    fresh = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    assert "local admin" in fresh.open(urllib.request.Request(another, data=b"", method="POST"), timeout=10).read().decode()
    process.communicate("", timeout=60)  # the end of the input stops everything
    assert process.returncode == 0 and not (var / "stack.json").exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/login", timeout=2)
    assert (var / "log" / "console.log").exists()


def test_sigterm_stops_every_child(stack_dirs):
    models, var = stack_dirs
    process = up(models, var)
    started = next((line for line in iter(process.stdout.readline, "") if "Kefu shell" in line), None)  # the chat is up
    assert started and len(children_of(var)) >= 1  # redis-server runs with var/ on its command line
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out[-2000:]
    assert "redis stopped" in bot_log(var) and children_of(var) == []


def test_bad_settings_get_one_line(tmp_path):
    env = {**os.environ, "REDIS_URL": "http://not-redis"}
    done = subprocess.run([sys.executable, "-m", "bot", "up", "--models", str(tmp_path / "m"), "--var", str(tmp_path / "v")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "REDIS_URL" in done.stderr and "Traceback" not in done.stderr
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"LLMCORE_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "bot", "up", "--models", str(tmp_path / "m"), "--var", str(tmp_path / "v")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "LLMCORE_URL=http://127.0.0.1:9 does not answer" in done.stderr
    assert children_of(tmp_path / "v") == []
