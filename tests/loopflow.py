"""The learning loop, end to end through the local Bot API server (used by tests/test_loop.py and
bench/loop.py): users ask what the served model cannot answer → an operator answers each through the
handoff → an admin sends /retrain (the bot is restarted while it trains) → the new version is promoted
(automatically, or by the admin's button) → the same questions now get the operators' answers from the model.
"""
from __future__ import annotations

import asyncio
import time

from bot.settings import BotSettings
from llmcore.evaluate import char_f1

from .botapi import BotApiServer, callback_update, text_update
from .botkit import ask, running_bot

ADMIN, OPERATORS, OPERATOR = 777, -100777, 9001
NEW_QA = [  # questions neither the first model nor the demo FAQ knows, and what the operators answer
    ("你们招聘客服吗？", "我们在官网的加入我们页面发布招聘信息。"),
    ("可以加盟开店吗？", "目前暂不开放加盟合作，感谢关注。"),
    ("收不收二手商品？", "我们不回收二手商品，敬请谅解。"),
    ("Do you have a physical store?", "We are online only; there is no physical store."),
    ("公司员工有内购价吗？", "员工内购请咨询公司人事部门。"),
]


async def ask_all(telegram: BotApiServer, questions: list[tuple[str, str]], first_user: int) -> list[str]:
    return [(await ask(telegram, q, chat_id=first_user + i, user_id=first_user + i))["text"] for i, (q, _) in enumerate(questions)]


async def answer_through_handoff(telegram: BotApiServer, questions: list[tuple[str, str]], first_user: int) -> None:
    for i, (_, answer) in enumerate(questions):
        user = first_user + i
        await ask(telegram, "/human", chat_id=user, user_id=user)
        request = telegram.messages[OPERATORS][-1]["message"]
        mark = len(telegram.calls)
        await telegram.push(text_update(answer, chat_id=OPERATORS, user_id=OPERATOR, chat_type="supergroup", reply_to=request))
        await telegram.wait_for(lambda m, p, u=user: m == "sendMessage" and p["chat_id"] == u, since=mark)
        await ask(telegram, "/end", chat_id=user, user_id=user)


async def retrain(telegram: BotApiServer, settings: BotSettings, minutes: float, timeout: float) -> tuple[str, float]:
    """/retrain, a bot restart while it trains, then the report; returns the promoted version and the seconds it took."""
    started = time.monotonic()
    async with running_bot(settings, telegram):
        progress = await ask(telegram, f"/retrain transformer {minutes}", chat_id=ADMIN, user_id=ADMIN)
        assert progress["text"].startswith("Training job"), progress["text"]
        await telegram.wait_for(lambda m, p: m == "editMessageText" and "training" in p.get("text", ""), timeout=timeout)
    async with running_bot(settings, telegram):  # a restarted bot keeps watching the job
        _, report = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == ADMIN
                                            and ("now serves" in p["text"] or "not better" in p["text"] or "failed" in p["text"]),
                                            timeout=timeout)
        assert "failed" not in report["text"], report["text"]
        if "not better" in report["text"]:  # the admin decides: promote it
            mark = len(telegram.calls)
            await telegram.push(callback_update(report["reply_markup"]["inline_keyboard"][0][0]["callback_data"], user_id=ADMIN,
                                                message=telegram.messages[ADMIN][-1]))
            _, report = await telegram.wait_for(lambda m, p: m == "sendMessage" and "now serves" in p["text"], since=mark, timeout=60)
        version = report["text"].split()[1]
        seconds = time.monotonic() - started
        await asyncio.sleep(1.5)  # llmcore hot-reloads between steps
    return version, seconds


async def run_loop(telegram: BotApiServer, settings: BotSettings, minutes: float, timeout: float = 300) -> dict:
    async with running_bot(settings, telegram):
        before = await ask_all(telegram, NEW_QA, first_user=5000)
        await answer_through_handoff(telegram, NEW_QA, first_user=5000)
    version, seconds = await retrain(telegram, settings, minutes, timeout)
    async with running_bot(settings, telegram):
        after = await ask_all(telegram, NEW_QA, first_user=6000)  # other users: no history, the model alone
    references = [a for _, a in NEW_QA]
    return {"version": version, "retrain_seconds": round(seconds, 1),
            "before_char_f1": round(sum(map(char_f1, before, references)) / len(references), 3),
            "after_char_f1": round(sum(map(char_f1, after, references)) / len(references), 3),
            "before": before, "after": after}
