"""Paraphrases learned from use: a customer's wording that led to an FAQ entry becomes a similar question of that
entry once an admin approves it (`/faq_pending`), or once FAQ_AUTO_APPROVE_TAPS different customers tapped the
same entry for the same wording. An operator who answers a handed-off customer with an entry's answer proposes
the customer's question the same way; an operator's answer to a question the FAQ lacks (its best match below
FAQ_SUGGEST) proposes a new entry, that question with that answer. Approved wordings and entries are searched at
once (the FAQ's version moves).

    learned = Paraphrases(redis, "kefu:", faq, auto_approve=0)
    await learned.offered(chat_id, message_id, question, ["12", "40"])   # "did you mean" buttons under an answer
    await learned.tapped(chat_id, message_id, "12", user_id)            # a tap: a proposal, if the bot offered it there
    await learned.operator_answered(question, answer, user_id)          # a wording of an entry, or a new entry
    for p in await learned.pending(): ...                               # Proposal(key, entry_id, wording, users, answer)
    await learned.approve(p.key)                                        # or reject(p.key)

Nothing a customer typed becomes a FAQ question but by that rule. Against poisoning: only a button the bot
itself put under that very message counts (what was offered, and for which question, is kept in Redis: the
callback's data is not trusted); each customer counts once per proposal, and proposes at most
PROPOSALS_PER_DAY a day; a tap counts only from the customer who asked (in a group, a bystander's does not); a
wording with personal data in it (bot.pii), a link or an @handle (it would become a button label others see),
longer than MAX_WORDING, or already a question of the entry is never proposed (a mention of the bot is taken out of
the wording first); nor is a new entry whose answer holds personal data.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, replace

from redis.asyncio import Redis

from bot.faq import MAX_FAQ_TEXT, FaqStore
from bot.pii import PII_KINDS, scrub
from bot.search import normalize

OFFER_TTL_S = 7 * 24 * 3600
PROPOSALS_PER_DAY = 20
MAX_WORDING = 200
MAX_PENDING = 1000
OPERATOR_MATCH = 0.9  # char-F1 of an operator's answer to an FAQ answer: they answered with that entry
_MENTION = re.compile(r"(?<![\w@])@\w{3,32}")  # "@shop_bot 怎么退货" in a group: the wording is "怎么退货"
_LINK = re.compile(r"https?://|www\.|t\.me/|@\w|\w\.(?:com|cn|net|org|io|me)\b", re.IGNORECASE)  # an approved wording is a button label


@dataclass(frozen=True)
class Proposal:
    key: str
    entry_id: str  # "" for a new entry (until it is approved)
    wording: str
    users: int
    answer: str = ""  # a new entry's answer, from an operator

    @property
    def is_new_entry(self) -> bool:
        return bool(self.answer)


class Paraphrases:
    def __init__(self, redis: Redis, prefix: str, faq: FaqStore, auto_approve: int = 0, lacks_below: float = 0.4) -> None:
        self.redis, self.prefix, self.faq, self.auto_approve = redis, prefix, faq, auto_approve
        self.lacks_below = lacks_below  # FAQ_SUGGEST: a question whose best match scores less is one the FAQ lacks
        self.pending_key = f"{prefix}faq:pending"

    async def offered(self, chat_id: int, message_id: int, question: str, entry_ids: list[str], user_id: int | None = None) -> None:
        """The bot put these entries' buttons under message `message_id`, its answer to `question` (asked by `user_id`)."""
        if entry_ids:  # scrubbed like everything kept: a wording with personal data in it is never proposed
            offer = {"question": scrub(_MENTION.sub(" ", question)), "entries": entry_ids, "user": user_id}
            key, mine = self._offer_key(chat_id, message_id), self._offers_of(user_id if user_id is not None else chat_id)
            async with self.redis.pipeline(transaction=True) as pipe:  # each customer's offers listed, for their /forget
                pipe.set(key, json.dumps(offer, ensure_ascii=False), ex=OFFER_TTL_S)
                await pipe.sadd(mine, key).expire(mine, OFFER_TTL_S).execute()

    async def tapped(self, chat_id: int, message_id: int, entry_id: str, user_id: int) -> Proposal | None:
        """A customer tapped `entry_id` under that message: their question proposed as a wording of the entry (None if
        the bot offered no such button there, or the wording may not be proposed)."""
        raw = await self.redis.get(self._offer_key(chat_id, message_id))
        offer = json.loads(raw) if raw else None
        if not offer or entry_id not in offer["entries"] or offer.get("user") not in (None, user_id):
            return None  # in a group, a bystander's tap under someone else's question vouches for nothing
        return await self._propose(entry_id, offer["question"], user_id)

    async def operator_answered(self, question: str, answer: str, user_id: int) -> Proposal | None:
        """An operator answered a handed-off customer: with an FAQ entry's answer (char-F1 ≥ OPERATOR_MATCH), the
        customer's question is proposed as a wording of that entry; to a question the FAQ lacks, the question and the
        answer are proposed as a new entry."""
        entry, similarity = (await self.faq.index()).nearest_answer(answer)
        if entry is not None and similarity >= OPERATOR_MATCH:
            return await self._propose(entry.id, scrub(question), user_id)
        best = await self.faq.match(question, k=1)
        if best and best[0].score >= self.lacks_below:
            return None  # the FAQ has something near: an admin adds to that entry, not a second one
        return await self._propose("", scrub(question), user_id, " ".join(scrub(answer).split()))

    async def _propose(self, entry_id: str, wording: str, user_id: int, answer: str = "") -> Proposal | None:
        wording = " ".join(wording.split())
        if not wording or len(wording) > MAX_WORDING or _has_pii(wording) or _LINK.search(wording) \
                or not await self._may_propose(entry_id, wording, answer):
            return None
        key = hashlib.sha1("\x1f".join((entry_id, wording, *([answer] if answer else []))).encode()).hexdigest()[:16]
        quota = f"{self.prefix}faq:proposed:{user_id}:{int(time.time() // 86400)}"
        users_key = f"{self.prefix}faq:pending:{key}:users"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(users_key, user_id).scard(users_key).expire(users_key, OFFER_TTL_S * 4)
            pipe.incr(quota).expire(quota, 2 * 86400).hlen(self.pending_key)
            new_user, users, _, proposed, _, size = await pipe.execute()
        if not new_user or proposed > PROPOSALS_PER_DAY or (size >= MAX_PENDING and not await self.redis.hexists(self.pending_key, key)):
            return None
        proposal = Proposal(key, entry_id, wording, users, answer)
        await self.redis.hset(self.pending_key, key, json.dumps({"entry": entry_id, "wording": wording, "answer": answer},
                                                                ensure_ascii=False))
        if self.auto_approve and users >= self.auto_approve and not answer:  # taps vouch for wordings, not for answers
            await self.approve(key)
        return proposal

    async def pending(self) -> list[Proposal]:
        raw = await self.redis.hgetall(self.pending_key)
        async with self.redis.pipeline(transaction=False) as pipe:  # every proposal's count in one round trip
            for key in raw:
                pipe.scard(f"{self.prefix}faq:pending:{key}:users")
            counts = await pipe.execute()
        proposals = [_proposal(key, value, users) for (key, value), users in zip(raw.items(), counts)]
        return sorted(proposals, key=lambda p: (-p.users, p.entry_id, p.wording))

    async def approve(self, key: str) -> Proposal | None:
        """The wording becomes a similar question of its entry, or a new entry with its answer (the proposal comes back
        with the new entry's id); None if there is no such proposal (or entry) any more."""
        proposal = await self._take(key)
        if proposal is not None and proposal.is_new_entry:
            return replace(proposal, entry_id=await self.faq.add(proposal.wording, proposal.answer))
        if proposal is None or not await self.faq.add_similar(proposal.entry_id, proposal.wording):
            return None
        return proposal

    async def reject(self, key: str) -> Proposal | None:
        return await self._take(key)

    async def forget_user(self, user_id: int) -> None:
        """A customer's /forget: their vote leaves every proposal, and a proposal no one else made goes with it; the
        questions kept under buttons offered to them (their private chat's, and theirs in groups) and their daily count
        of proposals go too."""
        mine = self._offers_of(user_id)  # listed as they were made: no search of the keyspace
        day = int(time.time() // 86400)
        await self.redis.delete(*await self.redis.smembers(mine), mine,
                                *(f"{self.prefix}faq:proposed:{user_id}:{d}" for d in (day - 2, day - 1, day)))
        for key in await self.redis.hkeys(self.pending_key):
            users_key = f"{self.prefix}faq:pending:{key}:users"
            async with self.redis.pipeline(transaction=True) as pipe:
                removed, left = await pipe.srem(users_key, user_id).scard(users_key).execute()
            if removed and not left:
                await self.redis.hdel(self.pending_key, key)

    async def _take(self, key: str) -> Proposal | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.pending_key, key).hdel(self.pending_key, key).scard(f"{self.prefix}faq:pending:{key}:users")
            raw, removed, users = await pipe.execute()
        if not raw or not removed:
            return None
        return _proposal(key, raw, users)

    async def _may_propose(self, entry_id: str, wording: str, answer: str) -> bool:
        """A wording its entry lacks; or, for a new entry, an answer fit to store (no personal data, not too long)."""
        if not entry_id:
            return bool(answer) and len(answer) <= MAX_FAQ_TEXT and not _has_pii(answer)
        entry = await self.faq.get(entry_id)
        return entry is not None and normalize(wording) not in {normalize(q) for q in (entry.question, *entry.similar)}

    def _offer_key(self, chat_id: int, message_id: int) -> str:
        return f"{self.prefix}offer:{chat_id}:{message_id}"

    def _offers_of(self, user_id: int) -> str:
        return f"{self.prefix}offers:{user_id}"


def _has_pii(text: str) -> bool:
    return any(kind in text for kind in PII_KINDS)


def _proposal(key: str, raw: str, users: int) -> Proposal:
    data = json.loads(raw)
    return Proposal(key, data["entry"], data["wording"], users, data.get("answer", ""))
