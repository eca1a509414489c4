"""A local Telegram Bot API server for tests: the real python-telegram-bot talks to it over HTTP.

Usage::

    server = BotApiServer()                      # token "123456:TEST-TOKEN", bot @kefu_test_bot
    await server.start()
    app = ApplicationBuilder().token(server.token).base_url(f"{server.base}/bot").build()
    ...
    await server.push(text_update("/start"))     # queued for getUpdates, or POSTed to the webhook when one is set
    method, params = await server.wait_for(lambda m, p: m == "sendMessage")
    assert server.sent_texts(USER_ID) == ["..."]
    await server.close()

Requests are answered like api.telegram.org: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ...,
"description": ...}``. PTB posts ``application/x-www-form-urlencoded`` (``multipart/form-data`` when a file is
uploaded) where every non-string parameter is JSON-encoded; JSON bodies and query strings are accepted too.

Modelled: getMe, getUpdates (offset/limit/long-poll timeout/allowed_updates), set/delete/getWebhook(Info), sendMessage,
editMessageText, editMessageReplyMarkup, deleteMessage, sendChatAction, answerCallbackQuery, sendMessageDraft,
set/get/deleteMyCommands, sendDocument, sendPhoto, setMessageReaction, getChat. Only parse_mode HTML is parsed (to
count visible characters and reject bad markup); lengths are counted in Python characters. Webhook URLs may be http.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

USER_ID = 424242
RESTRICTED_RIGHTS = ("can_change_info", "can_invite_users", "can_pin_messages", "can_send_messages", "can_send_polls",
                     "can_send_other_messages", "can_add_web_page_previews", "can_manage_topics", "can_send_audios",
                     "can_send_documents", "can_send_photos", "can_send_videos", "can_send_video_notes",
                     "can_send_voice_notes", "can_edit_tag", "can_react_to_messages")
GROUP_ID = -1001234567890
MAX_TEXT = 4096
MAX_CAPTION = 1024
WEBHOOK_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
CONFLICT_WEBHOOK = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
                "as a current content and reply markup of the message")

# form parameters that arrive JSON-encoded, as integers, or as booleans
JSON_PARAMS = {"reply_markup", "reply_parameters", "link_preview_options", "entities", "caption_entities", "allowed_updates",
               "commands", "scope", "reaction", "media"}
INT_PARAMS = {"chat_id", "from_chat_id", "message_id", "offset", "limit", "timeout", "draft_id", "message_thread_id", "reply_to_message_id",
              "max_connections", "cache_time", "user_id"}
BOOL_PARAMS = {"disable_notification", "drop_pending_updates", "show_alert", "protect_content", "is_big",
               "disable_web_page_preview", "allow_sending_without_reply", "disable_content_type_detection"}
# updates Telegram leaves out unless allowed_updates names them
OPT_IN_UPDATES = {"chat_member", "message_reaction", "message_reaction_count"}

_ids = itertools.count(1000)


class ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(self, code: int, description: str, parameters: dict | None = None):
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


# ---------------------------------------------------------------- HTML parse_mode
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "tg-emoji", "code", "pre",
             "blockquote", "tg-time"}
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(\s[^<>]*)?>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def html_visible_text(text: str) -> str:
    """The text Telegram shows for parse_mode HTML: tags stripped, entities unescaped; ApiError on bad markup."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    while pos < len(text):
        offset = len(text[:pos].encode())
        if text[pos] == "<":
            m = _TAG.match(text, pos)
            name = m.group(2).lower() if m else re.match(r"</?([^\s>]*)", text[pos:]).group(1)
            if not m or name not in HTML_TAGS:
                raise bad_request(f'can\'t parse entities: Unsupported start tag "{name}" at byte offset {offset}')
            if not m.group(1):
                stack.append(name)
            elif not stack:
                raise bad_request(f"can't parse entities: Unexpected end tag at byte offset {offset}")
            elif stack[-1] != name:
                raise bad_request(f'can\'t parse entities: Unmatched end tag at byte offset {offset}, expected "</{stack[-1]}>", '
                                  f'found "</{name}>"')
            else:
                stack.pop()
            pos = m.end()
        elif text[pos] == "&" and (m := _ENTITY.match(text, pos)):
            ref = m.group(1)
            out.append(_NAMED.get(ref) or chr(int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])))
            pos = m.end()
        else:
            out.append(text[pos])
            pos += 1
    if stack:
        raise bad_request(f'can\'t parse entities: Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def visible_text(text: str, parse_mode: str | None) -> str:
    return html_visible_text(text) if (parse_mode or "").upper() == "HTML" else text


def utf16_len(text: str) -> int:
    """Telegram measures entity offsets and lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------- update builders
def user_dict(user_id: int = USER_ID, first_name: str = "Test", username: str | None = "tester",
              language_code: str | None = "zh-hans") -> dict:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        user["username"] = username
    if language_code:
        user["language_code"] = language_code
    return user


def chat_dict(chat_id: int, chat_type: str = "private", user: dict | None = None) -> dict:
    if chat_type == "private":
        user = user or {}
        return {"id": chat_id, "type": "private", "first_name": user.get("first_name", "Test"),
                **({"username": user["username"]} if user.get("username") else {})}
    return {"id": chat_id, "type": chat_type, "title": "Test group"}


def text_entities(text: str) -> list[dict]:
    """bot_command for a leading /command (with its @botname), mention for each @username."""
    entities = []
    command_end = 0
    if m := re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text):
        command_end = m.end()
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(m.group())})
    for m in re.finditer(r"(?<![\w@])@[A-Za-z][A-Za-z0-9_]{3,31}", text):
        if m.start() >= command_end:
            entities.append({"type": "mention", "offset": utf16_len(text[:m.start()]), "length": utf16_len(m.group())})
    return entities


def message_update(*, chat_id: int | None = None, user_id: int = USER_ID, chat_type: str = "private",
                   message_id: int | None = None, first_name: str = "Test", username: str | None = "tester",
                   language_code: str | None = "zh-hans", **fields: Any) -> dict:
    """An Update with a message from a user; ``fields`` are the message's own (text, photo, sticker, ...)."""
    user = user_dict(user_id, first_name, username, language_code)
    if chat_id is None:
        chat_id = user_id if chat_type == "private" else GROUP_ID
    message = {"message_id": message_id or next(_ids), "from": user, "chat": chat_dict(chat_id, chat_type, user),
               "date": int(time.time()), **fields}
    return {"message": message}


def text_update(text: str, chat_id: int | None = None, user_id: int = USER_ID, chat_type: str = "private",
                language_code: str | None = "zh-hans", first_name: str = "Test", username: str | None = "tester",
                reply_to: dict | None = None, message_id: int | None = None) -> dict:
    """An Update with a text message, with entities for a leading /command and @mentions."""
    fields: dict[str, Any] = {"text": text}
    if entities := text_entities(text):
        fields["entities"] = entities
    if reply_to is not None:
        fields["reply_to_message"] = reply_to.get("message", reply_to) if "deleted" in reply_to else reply_to
    return message_update(chat_id=chat_id, user_id=user_id, chat_type=chat_type, message_id=message_id, first_name=first_name,
                          username=username, language_code=language_code, **fields)


def callback_update(data: str, user_id: int = USER_ID, chat_id: int | None = None, message: dict | None = None) -> dict:
    """An Update with a callback query from a button on ``message`` (a Message dict, or a server.messages record)."""
    if message is not None and "deleted" in message:
        message = message["message"]
    if message is None:
        chat = chat_dict(user_id if chat_id is None else chat_id, "private" if chat_id in (None, user_id) else "supergroup")
        message = {"message_id": next(_ids), "date": int(time.time()), "chat": chat, "text": ""}
    query = {"id": str(next(_ids)), "from": user_dict(user_id), "chat_instance": f"ci{message['chat']['id']}",
             "message": message, "data": data}
    return {"callback_query": query}


def update_type(update: dict) -> str:
    return next(key for key in update if key != "update_id")


# ---------------------------------------------------------------- the server
class BotApiServer:
    """An aiohttp server at ``base`` answering ``/bot{token}/{method}`` and recording what the bot did."""

    def __init__(self, token: str = "123456:TEST-TOKEN", *, username: str = "kefu_test_bot", first_name: str = "Kefu"):
        self.token = token
        self.bot_user = {"id": int(token.split(":")[0]), "is_bot": True, "first_name": first_name, "username": username}
        self.calls: list[tuple[str, dict]] = []
        self.messages: dict[int, list[dict]] = {}
        self.drafts: list[dict] = []
        self.actions: list[dict] = []
        self.callback_answers: list[dict] = []
        self.reactions: list[dict] = []
        self.files: list[dict] = []
        self.commands: dict[str, list[dict]] = {}
        self.webhook: dict | None = None
        self.updates: list[dict] = []  # queued for getUpdates, not yet confirmed
        self.allowed_updates: list[str] = []
        self.chats: dict[int, dict] = {}
        self._next_message_id: dict[int, int] = {}
        self._next_update_id = 1
        self._flood_left = 0
        self._flood_retry = 1
        self._flood_methods: tuple[str, ...] = ("send", "edit")
        self.unreachable = 0  # the next this many calls answer 502, as a proxy in front of a Bot API that is not up yet
        self.unreachable_for: dict[str, int] = {}  # method -> its next this many calls answer 502 (a blip on that call)
        self.refused_for: dict[str, int] = {}  # method -> its next this many calls answer 400 (the replied-to message deleted)
        self.delay_s: dict[str, float] = {}  # a slow Telegram: a method takes this long, and counts as done when it returns
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base = ""
        self._user_messages: dict[tuple[int, int], dict] = {}
        self._closing = False
        self._methods: dict[str, tuple[str, Callable]] = {}
        self.uploads: dict[str, bytes] = {}
        self.forbidden: set[int] = set()
        self.members: dict[int, set[int]] = {}  # group chat id -> its members' user ids (getChatMember)
        self.restricted: dict[tuple[int, int], bool] = {}  # (group chat id, user id) -> still in the group (is_member)
        for name in ("getMe", "getUpdates", "setWebhook", "deleteWebhook", "getWebhookInfo", "sendMessage", "editMessageText",
                     "editMessageReplyMarkup", "deleteMessage", "sendChatAction", "answerCallbackQuery", "sendMessageDraft",
                     "setMyCommands", "getMyCommands", "deleteMyCommands", "sendDocument", "sendPhoto", "setMessageReaction",
                     "getChat", "getFile", "getChatMember", "copyMessage"):
            self._methods[name.lower()] = (name, getattr(self, "_" + re.sub(r"([A-Z])", r"_\1", name).lower()))

    # ---- lifecycle
    async def start(self) -> BotApiServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def close(self) -> None:
        self._closing = True
        self._notify()  # wake long polls
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> BotApiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- test helpers
    def flood(self, count: int, retry_after: int = 1, methods: tuple[str, ...] = ("send", "edit")) -> None:
        """The next ``count`` calls of methods starting with one of ``methods`` (by default send*/edit*, sendChatAction
        and sendMessageDraft included) answer 429 Too Many Requests."""
        self._flood_left, self._flood_retry, self._flood_methods = count, retry_after, methods

    def sent_texts(self, chat_id: int, include_deleted: bool = False) -> list[str]:
        """Current texts (or captions) of the bot's messages in a chat, oldest first."""
        return [m["text"] for m in self.messages.get(chat_id, []) if include_deleted or not m["deleted"]]

    async def wait_for(self, predicate: str | Callable[[str, dict], bool], timeout: float = 10, since: int = 0) -> tuple[str, dict]:
        """The first call (from index ``since``) whose method equals ``predicate`` or for which predicate(method, params)."""
        match = (lambda m, p: m == predicate) if isinstance(predicate, str) else predicate
        deadline = asyncio.get_running_loop().time() + timeout
        checked = since
        while True:
            for method, params in self.calls[checked:]:
                if match(method, params):
                    return method, params
            checked = max(checked, len(self.calls))
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching call within {timeout}s; calls: {[m for m, _ in self.calls[since:]]}")
            await self._wait_change(remaining)

    async def push(self, update: dict) -> int | None:
        """Deliver an update: POST it to the webhook (returns the HTTP status) or queue it for getUpdates (returns None)."""
        update = json.loads(json.dumps(update))  # a snapshot, and a check that it is JSON
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        self._remember(update)
        if self.webhook:
            secret = self.webhook.get("secret_token")
            return await self.post_raw(json.dumps(update, ensure_ascii=False).encode(), secret)
        allowed = set(self.allowed_updates) or {update_type(update)} - OPT_IN_UPDATES
        if update_type(update) in allowed:
            self.updates.append(update)
            self._notify()
        return None

    async def post_raw(self, body: bytes, secret: str | None, content_type: str = "application/json") -> int:
        """POST anything to the webhook url, as Telegram would, and return the HTTP status."""
        assert self.webhook and self._session, "no webhook set"
        headers = {"Content-Type": content_type, **({WEBHOOK_SECRET_HEADER: secret} if secret is not None else {})}
        async with self._session.post(self.webhook["url"], data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    # ---- plumbing
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _remember(self, update: dict) -> None:
        """Learn chats and message ids from pushed updates, so replies continue the chat's numbering."""
        message = update.get("message") or update.get("edited_message") or (update.get("callback_query") or {}).get("message")
        if message and "chat" in message:
            chat_id = message["chat"]["id"]
            self.chats[chat_id] = message["chat"]
            self._next_message_id[chat_id] = max(self._next_message_id.get(chat_id, 1), message["message_id"] + 1)
            self._user_messages[(chat_id, message["message_id"])] = message

    def add_file(self, content: bytes, file_name: str = "file.bin") -> dict:
        """A file a user sends (e.g. a document): its Document JSON; getFile and the download serve its bytes."""
        file_id = f"UPLOAD{next(_ids)}"
        self.uploads[file_id] = content
        return {"file_id": file_id, "file_unique_id": file_id[-8:], "file_name": file_name, "file_size": len(content)}

    def forbid(self, chat_id: int) -> None:
        """The bot was removed from this chat: sending there answers 403, as Telegram does."""
        self.forbidden.add(chat_id)

    def _get_file(self, params: dict) -> dict:
        file_id = params.get("file_id")
        if file_id not in self.uploads:
            raise bad_request("invalid file_id")
        return {"file_id": file_id, "file_unique_id": file_id[-8:], "file_size": len(self.uploads[file_id]),
                "file_path": f"documents/{file_id}"}

    async def _handle(self, request: web.Request) -> web.Response:
        download = re.fullmatch(r"/file/bot([^/]+)/documents/([A-Za-z0-9]+)", request.path)
        if download:
            if download.group(1) != self.token or download.group(2) not in self.uploads:
                return web.Response(status=404)
            return web.Response(body=self.uploads[download.group(2)])
        m = re.fullmatch(r"/bot([^/]+)/([A-Za-z]+)", request.path)
        if not m:
            return _reply(ApiError(404, "Not Found"))
        if m.group(1) != self.token:
            return _reply(ApiError(401, "Unauthorized"))
        method, handler = self._methods.get(m.group(2).lower(), ("", None))
        if self.unreachable > 0 or self.unreachable_for.get(method, 0) > 0:
            if self.unreachable > 0:
                self.unreachable -= 1
            else:
                self.unreachable_for[method] -= 1
            self.calls.append(("unreachable:" + method, {}))
            return web.Response(status=502, text="Bad Gateway")
        try:
            params = await _read_params(request)
            if handler is None:
                raise ApiError(404, "Not Found")
            if self.delay_s.get(method):
                await asyncio.sleep(self.delay_s[method])
            self.calls.append((method, params))
            self._notify()
            if method.startswith(("send", "edit")) and params.get("chat_id") in self.forbidden:
                raise ApiError(403, "Forbidden: bot was kicked from the supergroup chat")
            if self.refused_for.get(method, 0) > 0:
                self.refused_for[method] -= 1
                raise bad_request("message to be replied not found")
            if self._flood_left > 0 and method.startswith(self._flood_methods):
                self._flood_left -= 1
                raise ApiError(429, f"Too Many Requests: retry after {self._flood_retry}", {"retry_after": self._flood_retry})
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as err:
            return _reply(err)
        return web.json_response({"ok": True, "result": result})

    def _chat(self, params: dict) -> dict:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise bad_request("chat_id is empty")
        if not isinstance(chat_id, int):
            raise bad_request("chat not found")
        return self.chats.get(chat_id) or {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup",
                                           **({"first_name": "Test"} if chat_id > 0 else {"title": "Test group"})}

    def _find(self, params: dict, what: str) -> dict:
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        for record in self.messages.get(chat_id, []) if isinstance(chat_id, int) else []:
            if record["message_id"] == message_id and not record["deleted"]:
                return record
        raise bad_request(f"message to {what} not found")

    def _store(self, method: str, params: dict, content: dict, text: str) -> dict:
        """Record a new bot message and return its Message JSON."""
        chat = self._chat(params)
        message_id = self._next_message_id.get(chat["id"], 1)
        self._next_message_id[chat["id"]] = message_id + 1
        message = {"message_id": message_id, "from": self.bot_user, "chat": chat, "date": int(time.time()), **content}
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        reply_to = (params.get("reply_parameters") or {}).get("message_id") or params.get("reply_to_message_id")
        known = [r["message"] for r in self.messages.get(chat["id"], []) if r["message_id"] == reply_to]
        if reply_to and (replied := known[0] if known else self._user_messages.get((chat["id"], reply_to))):
            message["reply_to_message"] = replied
        if params.get("message_thread_id"):
            message["message_thread_id"] = params["message_thread_id"]
        record = {"message_id": message_id, "chat_id": chat["id"], "method": method, "text": text,
                  "parse_mode": params.get("parse_mode"), "reply_markup": markup, "reply_to_message_id": reply_to,
                  "edits": 0, "deleted": False, "params": params, "message": message}
        self.messages.setdefault(chat["id"], []).append(record)
        return message

    # ---- methods (each takes the parsed params and returns the result or raises ApiError)
    def _get_me(self, params: dict) -> dict:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False,
                "can_connect_to_business": False, "has_main_web_app": False}

    async def _get_updates(self, params: dict) -> list[dict]:
        if self.webhook:
            raise ApiError(409, CONFLICT_WEBHOOK)
        if params.get("allowed_updates") is not None:
            self.allowed_updates = list(params["allowed_updates"])
        offset = int(params.get("offset") or 0)
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        elif offset < 0:
            self.updates = self.updates[offset:]
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        deadline = asyncio.get_running_loop().time() + float(params.get("timeout") or 0)
        while not self.updates and (remaining := deadline - asyncio.get_running_loop().time()) > 0 and not self._closing:
            await self._wait_change(remaining)
        return self.updates[:limit]

    def _set_webhook(self, params: dict) -> bool:
        if not params.get("url"):
            return self._delete_webhook(params)
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.allowed_updates = list(params.get("allowed_updates") or self.allowed_updates)
        self.webhook = {key: params[key] for key in ("url", "secret_token", "max_connections", "allowed_updates") if key in params}
        return True

    def _delete_webhook(self, params: dict) -> bool:
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = None
        return True

    def _get_webhook_info(self, params: dict) -> dict:
        info = {"url": "", "has_custom_certificate": False, "pending_update_count": len(self.updates)}
        if self.webhook:
            info.update(url=self.webhook["url"], max_connections=self.webhook.get("max_connections", 40))
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _send_message(self, params: dict) -> dict:
        text = str(params.get("text") or "")
        shown = _checked_text(text, params.get("parse_mode"))
        return self._store("sendMessage", params, {"text": shown}, text)

    def _edit_message_text(self, params: dict) -> dict | bool:
        if params.get("inline_message_id"):
            return True
        record = self._find(params, "edit")
        if "text" not in record["message"]:
            raise bad_request("there is no text in the message to edit")
        text = str(params.get("text") or "")
        shown = _checked_text(text, params.get("parse_mode"))
        markup = params.get("reply_markup")
        if shown == record["message"]["text"] and markup == record["reply_markup"]:
            raise bad_request(NOT_MODIFIED.removeprefix("Bad Request: "))
        record.update(text=text, parse_mode=params.get("parse_mode"))
        record["message"]["text"] = shown
        return self._apply_edit(record, markup)

    def _edit_message_reply_markup(self, params: dict) -> dict | bool:
        if params.get("inline_message_id"):
            return True
        record = self._find(params, "edit")
        markup = params.get("reply_markup")
        if markup == record["reply_markup"]:
            raise bad_request(NOT_MODIFIED.removeprefix("Bad Request: "))
        return self._apply_edit(record, markup)

    def _apply_edit(self, record: dict, markup: dict | None) -> dict:
        """An edit without reply_markup removes the inline keyboard, as on Telegram."""
        record["reply_markup"] = markup
        record["edits"] += 1
        message = record["message"]
        message.pop("reply_markup", None)
        if markup and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    def _delete_message(self, params: dict) -> bool:
        self._find(params, "delete")["deleted"] = True
        return True

    def _send_chat_action(self, params: dict) -> bool:
        self._chat(params)
        self.actions.append(params)
        return True

    def _answer_callback_query(self, params: dict) -> bool:
        if not params.get("callback_query_id"):
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        self.callback_answers.append(params)
        return True

    def _send_message_draft(self, params: dict) -> bool:
        if self._chat(params)["type"] != "private":
            raise bad_request("draft can be sent only to private chats")  # wording approximate
        if not params.get("draft_id"):
            raise bad_request("draft_id must be non-zero")  # wording approximate
        text = str(params.get("text") or "")
        if utf16_len(visible_text(text, params.get("parse_mode"))) > MAX_TEXT:
            raise bad_request("message is too long")
        self.drafts.append(params)
        return True

    def _set_my_commands(self, params: dict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise bad_request("commands must be a list")
        self.commands[_scope_key(params)] = commands
        return True

    def _get_my_commands(self, params: dict) -> list[dict]:
        return self.commands.get(_scope_key(params), [])

    def _delete_my_commands(self, params: dict) -> bool:
        self.commands.pop(_scope_key(params), None)
        return True

    def _send_document(self, params: dict) -> dict:
        upload = self._upload("document", params)
        document = {"file_id": upload["file_id"], "file_unique_id": upload["file_id"][-8:], "file_name": upload["filename"],
                    "file_size": upload["size"], "mime_type": upload["content_type"]}
        return self._store("sendDocument", params, {"document": document, **_caption(params)}, params.get("caption", ""))

    def _send_photo(self, params: dict) -> dict:
        upload = self._upload("photo", params)
        photo = [{"file_id": upload["file_id"], "file_unique_id": upload["file_id"][-8:], "width": 640, "height": 480,
                  "file_size": upload["size"]}]
        return self._store("sendPhoto", params, {"photo": photo, **_caption(params)}, params.get("caption", ""))

    def _copy_message(self, params: dict) -> dict:
        """A copy of a user's or the bot's message (its content, caption included) in chat_id; a MessageId, as Telegram
        answers. A service message or one the server never saw cannot be copied."""
        source_chat, source_id = params.get("from_chat_id"), params.get("message_id")
        known = [r["message"] for r in self.messages.get(source_chat, []) if r["message_id"] == source_id and not r["deleted"]]
        source = self._user_messages.get((source_chat, source_id)) or (known[0] if known else None)  # pushed ids may repeat the bot's
        if source is None:
            raise bad_request("message to copy not found")
        content = {key: source[key] for key in COPIED_FIELDS if key in source}
        if not content:
            raise bad_request("message can't be copied")
        if "caption" in params:
            content.update(_caption(params))
        message = self._store("copyMessage", params, content, content.get("caption") or content.get("text") or "")
        return {"message_id": message["message_id"]}

    def _upload(self, field: str, params: dict) -> dict:
        value = params.get(field)
        if not value:
            raise bad_request(f"there is no {field} in the request")
        upload = value if isinstance(value, dict) else {"filename": None, "size": None, "content_type": None, "file_id": value}
        upload = {"file_id": f"FILE{next(_ids)}", **upload, "method": field, "chat_id": params.get("chat_id")}
        self.files.append(upload)
        return upload

    def _set_message_reaction(self, params: dict) -> bool:
        self._chat(params)
        self.reactions.append(params)
        return True

    def _get_chat_member(self, params: dict) -> dict:
        user_id, chat_id = int(params["user_id"]), int(params["chat_id"])
        if (chat_id, user_id) in self.restricted:  # ChatMemberRestricted: in the group or not (is_member), muted
            rights = dict.fromkeys(RESTRICTED_RIGHTS, False)
            return {"status": "restricted", "user": user_dict(user_id, username=None), "is_member": self.restricted[chat_id, user_id],
                    "until_date": 0, **rights}
        status = "member" if user_id in self.members.get(chat_id, set()) else "left"
        return {"status": status, "user": user_dict(user_id, username=None)}

    def _get_chat(self, params: dict) -> dict:
        gifts = dict.fromkeys(("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription", "gifts_from_channels"), False)
        return {**self._chat(params), "accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": gifts}


# ---------------------------------------------------------------- helpers of the handlers
def _reply(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": err.code, "description": err.description}
    if err.parameters:
        body["parameters"] = err.parameters
    return web.json_response(body, status=err.code)


def _checked_text(text: str, parse_mode: str | None) -> str:
    shown = visible_text(text, parse_mode).strip()
    if not shown:
        raise bad_request("message text is empty")
    if utf16_len(shown) > MAX_TEXT:  # as Telegram counts: an emoji outside the BMP is two
        raise bad_request("message is too long")
    return shown


# what copyMessage carries over: a message's content, not its sender, date or replies
COPIED_FIELDS = ("text", "entities", "photo", "video", "animation", "document", "audio", "voice", "video_note", "sticker",
                 "location", "contact", "caption", "caption_entities")


def _caption(params: dict) -> dict:
    caption = params.get("caption")
    if not caption:
        return {}
    shown = visible_text(caption, params.get("parse_mode"))
    if len(shown) > MAX_CAPTION:
        raise bad_request("message caption is too long")
    return {"caption": shown}


def _scope_key(params: dict) -> str:
    """commands are stored per scope: "default", "all_private_chats", "chat:ID", "chat_member:ID:USER", plus "/lang"."""
    scope = params.get("scope") or {"type": "default"}
    key = ":".join(str(scope[k]) for k in ("type", "chat_id", "user_id") if k in scope)
    return f"{key}/{params['language_code']}" if params.get("language_code") else key


def _coerce(name: str, value: str) -> Any:
    """Form values are strings; PTB JSON-encodes every non-string parameter."""
    if name in JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {name} JSON object") from None
    if name in INT_PARAMS and re.fullmatch(r"-?\d+", value):
        return int(value)
    if name in BOOL_PARAMS:
        return value.lower() in ("true", "1")
    return value


async def _read_params(request: web.Request) -> dict:
    params: dict[str, Any] = {k: _coerce(k, v) for k, v in request.query.items()}
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON body") from None
        if not isinstance(body, dict):
            raise bad_request("can't parse JSON body")
        params.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        files: dict[str, dict] = {}
        for key, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                content = value.file.read()
                files[key] = {"filename": value.filename, "size": len(content), "content_type": value.content_type, "content": content}
            else:
                params[key] = _coerce(key, value)
        for key, value in list(params.items()):  # attach://name references, then plain file fields
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
                params[key] = files.pop(value[9:])
        params.update(files)
    return params
