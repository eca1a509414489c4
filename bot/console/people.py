"""Who is an admin or an operator of the console: ADMIN_IDS, OPERATOR_IDS, and the members of OPERATOR_CHAT_ID
(asked of Telegram, so the operators' group stays the one list to keep).

    role = await role_for(settings, bot, user_id)     # "admin", "operator" or None
    role = await Roles(settings, bot).of(user_id, unknown=session_role)  # the same, remembered a minute (sessions)
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

from telegram import Bot
from telegram.error import NetworkError, RetryAfter, TelegramError

from bot.console.auth import LOCAL_ADMIN_ID
from bot.settings import BotSettings

logger = logging.getLogger(__name__)
MEMBER_STATUSES = frozenset({"creator", "administrator", "member", "restricted"})
ROLE_TTL_S = 60.0
MAX_KNOWN = 4096


async def role_for(settings: BotSettings, bot: Bot | None, user_id: int, unknown: str | None = None) -> str | None:
    """`unknown`: the answer while Telegram cannot be asked (a login gets no way in; a session keeps its role)."""
    if user_id in settings.admin_ids:
        return "admin"
    if user_id in settings.operator_ids:
        return "operator"
    if settings.operator_chat_id is None or bot is None:
        return None
    try:
        member = await bot.get_chat_member(settings.operator_chat_id, user_id)
    except (NetworkError, RetryAfter) as exc:  # Telegram away (TimedOut included), or its flood control: not a "no"
        logger.info("console: membership of %s in the operators' chat unknown: %s", user_id, exc)
        # the session's role meanwhile, but no more than the group can give: an admin taken out of ADMIN_IDS is not one
        return "operator" if unknown else None
    except TelegramError as exc:  # not a member: Telegram says "user not found"
        logger.info("console: %s is not in the operators' chat: %s", user_id, exc)
        return None
    # a restricted user keeps that status after leaving the group: only one still in it is an operator
    member_now = member.status != "restricted" or getattr(member, "is_member", False)
    return "operator" if member.status in MEMBER_STATUSES and member_now else None


class Roles:
    """role_for, remembered ROLE_TTL_S per user: the console checks a session's person on every request, so that
    someone taken out of ADMIN_IDS, OPERATOR_IDS or the operators' group is out (or down to operator) within a minute,
    not when the session ends, without asking Telegram on every page."""

    def __init__(self, settings: BotSettings, bot: Bot | None, clock=time.monotonic) -> None:
        self.settings, self.bot, self.clock = settings, bot, clock
        self._known: OrderedDict[int, tuple[str | None, float]] = OrderedDict()

    async def of(self, user_id: int, unknown: str | None = None) -> str | None:
        if user_id == LOCAL_ADMIN_ID:  # the person at the terminal: only this machine's shell can mint their link
            return "admin"
        hit = self._known.get(user_id)
        if hit is not None and self.clock() - hit[1] < ROLE_TTL_S:
            return hit[0]
        role = await role_for(self.settings, self.bot, user_id, unknown)
        self._known[user_id] = (role, self.clock())
        self._known.move_to_end(user_id)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        return role
