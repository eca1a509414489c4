"""Who is an admin or an operator of the console: ADMIN_IDS, OPERATOR_IDS, and the members of OPERATOR_CHAT_ID
(asked of Telegram, so the operators' group stays the one list to keep).

    role = await role_for(settings, bot, user_id)     # "admin", "operator" or None
"""
from __future__ import annotations

import logging

from telegram import Bot
from telegram.error import TelegramError

from bot.settings import BotSettings

logger = logging.getLogger(__name__)
MEMBER_STATUSES = frozenset({"creator", "administrator", "member", "restricted"})


async def role_for(settings: BotSettings, bot: Bot | None, user_id: int) -> str | None:
    if user_id in settings.admin_ids:
        return "admin"
    if user_id in settings.operator_ids:
        return "operator"
    if settings.operator_chat_id is None or bot is None:
        return None
    try:
        member = await bot.get_chat_member(settings.operator_chat_id, user_id)
    except TelegramError as exc:  # not a member (Telegram says "user not found"), or Telegram away: no way in
        logger.info("console: membership of %s in the operators' chat unknown: %s", user_id, exc)
        return None
    return "operator" if member.status in MEMBER_STATUSES else None
