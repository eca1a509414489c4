"""Helpers of the bot's end-to-end tests: settings for a bot on the local Bot API server, running it in
polling or webhook mode, asking and reading buttons."""
import asyncio
import contextlib

from redis.exceptions import RedisError
from telegram.ext import Application

from bot.app import build_application, run_polling, run_webhook
from bot.llm import LlmClient
from bot.settings import BotSettings

from .botapi import USER_ID, BotApiServer, text_update
from .conftest import FAQ_PAIRS, free_port, serve_app

SECRET = "webhook-s3cret"
IN_FAQ = FAQ_PAIRS[:3]  # the FAQ store holds these; the model learned all of FAQ_PAIRS
MODEL_ONLY = FAQ_PAIRS[3]  # "客服电话是多少？": only the model knows it


def settings_for(telegram: BotApiServer, redis_url: str, llmcore_url: str, prefix: str, mode: str, **extra) -> BotSettings:
    options = {"telegram_bot_token": telegram.token, "telegram_api_base": telegram.base, "redis_url": redis_url,
               "redis_prefix": prefix, "llmcore_url": llmcore_url, "llmcore_timeout_s": 10, "min_confidence": -1.0,
               "max_answer_tokens": 40, **extra}
    if mode == "webhook":
        port = free_port()
        options.update(webhook_url=f"http://127.0.0.1:{port}/telegram/hook", webhook_listen=f"127.0.0.1:{port}", webhook_secret=SECRET)
    return BotSettings(_env_file=None, **options)


@contextlib.asynccontextmanager
async def running_bot(settings: BotSettings, telegram: BotApiServer, application: Application | None = None):
    application = application or build_application(settings)
    stop = asyncio.Event()
    runner = run_webhook(application, settings, stop) if settings.webhook_url else run_polling(application, stop)
    mark = len(telegram.calls)
    task = asyncio.create_task(runner)
    await telegram.wait_for("setWebhook" if settings.webhook_url else "getUpdates", since=mark, timeout=20)
    services = application.bot_data.services
    if services is not None:  # the bot answers at once, BM25 alone until the vectors are made: tests want the matcher
        with contextlib.suppress(RedisError):  # tests of Redis away: the bot is up, the FAQ waits for Redis
            await asyncio.wait_for(services.faq.ready(), 120)
    try:
        yield application
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def ask(telegram: BotApiServer, text: str, chat_id: int = USER_ID, **kw) -> dict:
    """Send a text update; the bot's next sendMessage to that chat."""
    mark = len(telegram.calls)
    await telegram.push(text_update(text, chat_id=chat_id, **kw))
    _, params = await telegram.wait_for(lambda m, p: m == "sendMessage" and p["chat_id"] == chat_id, since=mark, timeout=20)
    return params


async def model_answer(llmcore_url: str, messages: list[dict], repetition_penalty: float = 1.0):
    llm = LlmClient(llmcore_url, 10)
    await llm.start()
    try:
        return await llm.answer(messages, 40, repetition_penalty=repetition_penalty)
    finally:
        await llm.close()


def buttons(params: dict) -> dict[str, str]:
    rows = (params.get("reply_markup") or {}).get("inline_keyboard", [])
    return {b["text"]: b.get("callback_data") for row in rows for b in row}




SLOW_ANSWER = "慢回答"


async def slow_model():
    """An llmcore that answers SLOW_ANSWER (confident) once `release` is set: (runner, url, release)."""
    from aiohttp import web

    release = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": SLOW_ANSWER}, "finish_reason": "stop"}],
                                  "kefu": {"confidence": -0.1, "model_version": "v0001"}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner, url = await serve_app(app)
    return runner, url, release
