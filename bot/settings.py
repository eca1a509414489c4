"""Settings of the bot: environment variables and an optional `.env`, one object built in the entry point.

    settings = BotSettings()                  # reads TELEGRAM_BOT_TOKEN, REDIS_URL, LLMCORE_URL, ...
    settings = BotSettings(redis_url=...)     # tests and tools override fields directly

Names follow ARCHITECTURE.md (no prefix: TELEGRAM_BOT_TOKEN, REDIS_URL, ...); the README lists them all.
"""
from __future__ import annotations

import socket
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.hours import BusinessHours

TELEGRAM_API = "https://api.telegram.org"


class BotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    telegram_bot_token: SecretStr | None = Field(default=None, description="from @BotFather; without it only `shell` runs")
    telegram_api_base: str = Field(default=TELEGRAM_API, description="Bot API root URL: <base>/bot<token>/<method>")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field(default="kefu:", description="every key lives under it")
    llmcore_url: str = "http://127.0.0.1:8700"
    llmcore_timeout_s: float = Field(default=20.0, gt=0, description="the user gets the fallback answer by then")
    llmcore_admin_token: SecretStr | None = Field(default=None, description="LLMCORE_ADMIN_TOKEN, for the admin commands")
    admin_ids: Annotated[frozenset[int], NoDecode] = Field(default=frozenset(), description="comma-separated Telegram user ids")
    operator_chat_id: int | None = None
    operator_ids: Annotated[frozenset[int], NoDecode] = Field(default=frozenset(), description="operators by Telegram user id "
                                                             "(comma-separated), beside the members of OPERATOR_CHAT_ID")
    console_listen: str = Field(default="127.0.0.1:8480", description="host:port the console (python -m bot console) binds")
    console_url: str | None = Field(default=None, description="the console's public URL (https for the Telegram Mini App); "
                                                              "default http://CONSOLE_LISTEN")
    console_session_hours: float = Field(default=12, ge=1 / 60, le=24 * 30, description="a console login lasts this long "
                                         "(at least a minute)")
    console_trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = Field(
        default=(), description="comma-separated addresses or networks of the reverse proxies in front of the console: a "
        "request from one is counted (login attempts) by its X-Real-IP, not by the proxy's own address")
    console_low_confidence: float = Field(default=-0.5, le=0, description="model answers under this mean log-probability "
                                                                         "wait for review in the console's inbox")
    webhook_url: str | None = Field(default=None, description="public https URL; its path is the route served")
    webhook_listen: str = Field(default="127.0.0.1:8443", description="host:port the webhook server binds")
    webhook_secret: SecretStr | None = Field(default=None, description="X-Telegram-Bot-Api-Secret-Token; required with a webhook")
    faq_encoder: str = Field(default="use+e5", min_length=1,
                             description="encoder fused with BM25 for FAQ matching: use+e5, use or e5 (bundled), none (BM25 alone), "
                                         "or a sentence-transformers model name or path (the st extra)")
    faq_auto_approve_taps: int = Field(default=0, ge=0, description="'did you mean' taps by different customers that add their "
                                       "wording to the entry without an admin (0: an admin approves, /faq_pending)")
    faq_best: float = Field(default=0.75, ge=0, le=1, description="FAQ score that answers directly")
    faq_suggest: float = Field(default=0.25, ge=0, le=1, description="FAQ score that offers 'did you mean' buttons")
    faq_evidence: float = Field(default=0.4, ge=0, le=1,
                                description="FAQ score whose answer the model is given as evidence (a weaker near miss misleads it)")
    min_confidence: float = Field(default=-1.2, le=0, description="mean token log-probability a model answer needs")
    min_answer_probability: float = Field(default=0.7, ge=0, le=1,
                                          description="the version's calibrated probability of being right a model answer needs")
    history_turns: int = Field(default=20, ge=2, description="messages kept per chat")
    history_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="a quiet chat's history expires after this")
    model_history: int = Field(default=4, ge=0, description="recent messages sent to the model with the question (0: the question alone)")
    max_answer_tokens: int = Field(default=96, ge=1, le=4096)
    kb_check: bool = Field(default=True, description="a model answer must fit the FAQ (see bot/pipeline.py)")
    kb_check_min_score: float = Field(default=0.65, ge=0, le=1,
                                      description="FAQ score a question needs for a stock model answer (of its best entry)")
    kb_novel_min_confidence: float = Field(default=-0.15, le=0, description="confidence a model answer unlike every FAQ answer needs")
    repetition_penalty: float = Field(default=1.2, ge=1.0, le=3.0, description="discourages greedy small models from repeating")
    log_retention_days: int = Field(default=90, ge=1, description="exchanges older than this leave the training log")
    rate_limit_per_minute: int = Field(default=20, ge=1, description="messages a user may send per minute")
    outbound_per_second: float = Field(default=30, ge=0, description="Bot API calls per second (Telegram's limit); 0: no overall limit")
    handoff_idle_s: int = Field(default=30 * 60, ge=10, description="an open handoff with no message for this long closes")
    handoff_words: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("人工", "转人工", "客服", "真人", "human", "agent", "operator"),
        description="comma-separated words that open a handoff when a clause of a message asks for one (bot/operators.py)")
    handoff_after_fallbacks: int = Field(default=2, ge=0, description="fallbacks or 👎 in a row in one chat after which the bot "
                                         "offers a colleague (0: never)")
    handoff_hours: str = Field(default="", description="when operators answer, e.g. 'Mon-Fri 09:00-18:00 Asia/Shanghai' "
                               "(bot/hours.py); outside them a handoff waits for the next opening (empty: always)")
    retrain_minutes: float = Field(default=5.0, gt=0, le=120, description="/retrain's default training time")
    retrain_shape: dict[str, int] = Field(default_factory=dict, description='model shape for /retrain, e.g. {"n_layer": 2}')
    min_training_conversations: int = Field(default=10, ge=1, description="/retrain refuses with less data")
    max_message_chars: int = Field(default=2000, ge=1, description="longer questions are refused politely")
    replica_name: str = Field(default_factory=socket.gethostname, min_length=1,
                         description="this process among the bot's replicas (its name in the update stream); stable across restarts")

    @field_validator("admin_ids", "operator_ids", mode="before")
    @classmethod
    def _parse_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(" ", "").split(",") if part)
        return value

    @field_validator("handoff_words", "console_trusted_proxies", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        """A comma-separated list (words, or addresses and networks)."""
        if isinstance(value, str):
            return tuple(word.strip() for word in value.split(",") if word.strip())
        return value

    @field_validator("handoff_hours")
    @classmethod
    def _check_hours(cls, value: str) -> str:
        if value.strip():
            BusinessHours.parse(value)
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix:// (got {value!r})")
        return value

    @field_validator("console_url")
    @classmethod
    def _check_console_url(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
            raise ValueError(f"CONSOLE_URL must be an http(s) URL, got {value!r}")
        return value

    @field_validator("telegram_api_base", "llmcore_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_webhook(self) -> BotSettings:
        if self.webhook_url:
            if urlsplit(self.webhook_url).scheme not in ("http", "https"):
                raise ValueError(f"WEBHOOK_URL must be an http(s) URL, got {self.webhook_url!r}")
            if not self.webhook_secret or not self.webhook_secret.get_secret_value():
                raise ValueError("WEBHOOK_SECRET is required with WEBHOOK_URL (Telegram sends it with every update)")
        if self.faq_suggest > self.faq_best:
            raise ValueError("FAQ_SUGGEST must not be above FAQ_BEST")
        return self

    @property
    def business_hours(self) -> BusinessHours | None:
        """HANDOFF_HOURS parsed (checked when the settings were made); None: operators answer at any time."""
        return BusinessHours.parse(self.handoff_hours) if self.handoff_hours else None

    @property
    def webhook_path(self) -> str:
        return urlsplit(self.webhook_url).path or "/" if self.webhook_url else "/"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return _host_port(self.webhook_listen)

    @property
    def console_host_port(self) -> tuple[str, int]:
        return _host_port(self.console_listen)

    @property
    def console_base(self) -> str:
        """Where the console is reached: CONSOLE_URL, or the address it listens on."""
        return (self.console_url or f"http://{self.console_listen}").rstrip("/")


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "0.0.0.0", int(port)
