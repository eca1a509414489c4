"""The bot process carries no torch: every bot replica (and the bot image) stays small."""
import subprocess
import sys

from .conftest import REPO


def test_the_bot_imports_no_torch():
    probe = "import sys, bot.app, bot.shell, bot.__main__, bot.webhook; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_a_bot_only_install_pulls_no_torch():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]]
    assert "torch" not in names and "python-telegram-bot" in names
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["llmcore"])
