"""`python -m bot` commands: faq import / export / match, export of the training log, the terminal shell."""
import json
import subprocess
import sys

from bot.exchanges import Exchange, ExchangeLog
from bot.settings import BotSettings
from bot.shell import run_shell

from .conftest import FAQ_PAIRS, REPO, free_port


def cli(*args: str, redis_url: str, prefix: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "HOME": "/tmp"}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=REPO, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_faq_import_match_and_export(redis_url, prefix, faq_file, tmp_path):
    done = cli("faq", "import", str(faq_file), redis_url=redis_url, prefix=prefix)
    assert done.returncode == 0 and f"imported {len(FAQ_PAIRS)} entries" in done.stdout
    match = cli("faq", "match", "怎么退货", redis_url=redis_url, prefix=prefix)
    top = json.loads(match.stdout)
    assert top[0]["answer"] == FAQ_PAIRS[0][1] and 0 < top[0]["score"] <= 1 and len(top) <= 3
    paraphrase = json.loads(cli("faq", "match", "退货要怎么弄呢", redis_url=redis_url, prefix=prefix).stdout)[0]
    assert paraphrase["answer"] == FAQ_PAIRS[0][1] and 0 < paraphrase["score"] < 1  # lexical, semantic and fused scores
    assert 0 <= paraphrase["lexical"] < 1 and 0 < paraphrase["semantic"] <= 1 and 0 < paraphrase["answer_cosine"] <= 1
    assert 0 <= paraphrase["unknown"] <= 1 and paraphrase["encoder"] in ("use", "use+e5")  # USE alone when it is sure
    out = tmp_path / "faq.jsonl"
    assert cli("faq", "export", "--out", str(out), redis_url=redis_url, prefix=prefix).returncode == 0
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()] == [q for q, _ in FAQ_PAIRS]


def test_bad_input_gets_one_clear_line(redis_url, prefix, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("just one column\n")
    done = cli("faq", "import", str(bad), redis_url=redis_url, prefix=prefix)
    assert done.returncode == 2 and "bad.csv:1: expected two columns" in done.stderr and "Traceback" not in done.stderr
    done = cli("faq", "match", "x", redis_url="http://nope", prefix=prefix)
    assert done.returncode == 2 and "REDIS_URL" in done.stderr and "Traceback" not in done.stderr
    done = cli("faq", "match", "x", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    assert done.returncode == 2 and "Connect" in done.stderr and "Traceback" not in done.stderr
    done = cli("run", redis_url=redis_url, prefix=prefix)
    assert done.returncode == 2 and "TELEGRAM_BOT_TOKEN" in done.stderr


async def test_export_writes_training_jsonl(redis_url, prefix, redis, tmp_path):
    log = ExchangeLog(redis, prefix, 30)
    await log.append(Exchange(1, 1, "运费多少？", "满69包邮。", "model", -0.3, "v0001", 40))
    await log.append(Exchange(1, 1, "随便问问", "抱歉", "fallback", None, None, 40))
    out = tmp_path / "train.jsonl"
    done = cli("export", "--out", str(out), redis_url=redis_url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["messages"][1]["content"] == "满69包邮。" and record["meta"]["source"] == "model"


async def test_shell_answers_through_the_same_handlers(redis_url, llmcore_url, prefix, redis):
    lines = iter(["/start", "怎么退货", "#1", "你们家的 Kefu 机器人叫什么", "#9"])
    said: list[str] = []

    def read(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    settings = BotSettings(_env_file=None, redis_url=redis_url, redis_prefix=prefix, llmcore_url=llmcore_url, max_answer_tokens=40)
    await run_shell(settings, read=read, write=said.append)
    text = "\n".join(said)
    assert "Kefu" in said[1]  # the greeting
    assert "申请售后" in text  # the demo FAQ's return answer
    assert "#1 👍" in text and "(感谢您的反馈！)" in text  # the button was pressed and the rating stored
    assert await redis.hlen(f"{prefix}ratings") == 1
    assert "(no such button)" in text
    sources = [e["source"] for _, e in await redis.xrange(f"{prefix}log")]
    assert sources[0] == "faq" and sources[1] in ("model", "fallback")


def test_shell_logs_to_var_log_and_shows_only_warnings(redis_url, prefix, tmp_path):
    done = cli("shell", "--var", str(tmp_path), redis_url=redis_url, prefix=prefix, stdin="/retrain\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"Log: {tmp_path / 'log' / 'bot.log'} (warnings and errors also show here).\n")
    assert "Kefu shell" in done.stdout and "kefu> Not allowed" in done.stdout
    assert "WARNING bot.admin: audit: user 10000" in done.stderr and " INFO " not in done.stderr
    log = (tmp_path / "log" / "bot.log").read_text(encoding="utf-8")
    assert "INFO bot.app: the FAQ was empty: loaded" in log and "WARNING bot.admin: audit: user 10000" in log
