"""The FAQ knowledge base: entries in Redis, matched in-process by BM25 and a sentence encoder (bot/search.py).

    faq = FaqStore(redis, prefix="kefu:", encoder=load_encoder("use"))   # encoder None: BM25 alone
    await faq.load_demo_if_empty()              # the demo shop's FAQ from llmcore's corpus
    matches = await faq.match("怎么退货", k=3)   # [Match(entry, score, matched)], best first
    entry_id = await faq.add("营业时间?", "每天 9:00-21:00")
    await faq.import_file("faq.csv")             # question,answer  — or chat JSONL two-message conversations

An import merges by answer: a question whose answer an entry already has becomes one of that entry's similar
questions (if it is new), so importing a file again, or an export back into its own FAQ, adds nothing twice.

Every change bumps a version counter in Redis; `match` compares it with the version its index was
built from (one GET) and rebuilds when another replica, or the CLI, changed the FAQ. The CPU work — parsing a file,
building the index (jieba over every question), matching a long text — runs in a worker thread, so the event loop
keeps answering other chats meanwhile. The encoder's vector of
each question and answer is kept in Redis (`faq:vectors:<encoder>`, `faq:answer-vectors:<encoder>`, by the text's
SHA-1): a rebuild encodes only new texts, in a thread, and a restarted or another replica encodes none. A rebuild that
takes longer than REBUILD_WAIT_S (a large import; the first start, BM25 alone meanwhile) does not hold up matches:
they are served the index it replaces until it is done (`index()`).
"""
from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import WatchError

from bot.encoder import Encoder
from bot.search import FaqEntry, FaqIndex, Match, answer_texts, question_texts
from llmcore.chats import DEMO_DATA, DataError, read_conversations

logger = logging.getLogger(__name__)
MAX_FAQ_TEXT = 8000  # characters of a question or an answer (a long policy text: the reply is split in two)
INLINE_MATCH_CHARS = 200  # a longer text is segmented (jieba) and matched in a thread, off the event loop
REBUILD_WAIT_S = 2.0  # how long a match waits for a rebuild before it is served the index being replaced
ENCODE_CHUNK = 16  # texts encoded per call while building: a question encoded meanwhile waits for one chunk


class FaqStore:
    def __init__(self, redis: Redis, prefix: str, encoder: Encoder | None = None) -> None:
        self.redis = redis
        self.entries_key = f"{prefix}faq"
        self.next_key = f"{prefix}faq:next"
        self.version_key = f"{prefix}faq:version"
        self.encoder = encoder
        self.vectors_key = f"{prefix}faq:vectors:{encoder.name}" if encoder else ""
        self.answer_vectors_key = f"{prefix}faq:answer-vectors:{encoder.name}" if encoder else ""
        self._index: FaqIndex | None = None
        self._index_version: str | None = None  # None: an interim index (BM25 alone) while the first build runs
        self._build: asyncio.Task | None = None
        self._given_up: asyncio.Task | None = None  # the build callers stopped waiting for
        self.rebuild_wait_s = REBUILD_WAIT_S

    async def match(self, text: str, k: int = 3) -> list[Match]:
        index = await self.index()
        if len(text) > INLINE_MATCH_CHARS or index.encoder is not None:  # jieba on a long text; e5 takes ~15 ms a question
            return await asyncio.to_thread(index.match, text, k)
        return index.match(text, k=k)

    async def index(self) -> FaqIndex:
        """The index of the current FAQ version. A rebuild runs as a task, encoding only new texts; a caller waits for it
        up to REBUILD_WAIT_S (an entry added a moment ago is matched at once), then is served the index it replaces: the
        previous version's, or on the first build (the demo FAQ's ~1,000 questions take e5 ~10–30 s) BM25 alone, so no
        chat waits on a large import or a first start. Later callers are served it at once until the build is done."""
        version = await self.redis.get(self.version_key) or "0"
        if self._index is not None and version == self._index_version:
            return self._index
        if not self.building:
            self._build = asyncio.create_task(self._rebuild())
            self._build.add_done_callback(_report)
        build = self._build
        if self._index is not None and self._given_up is build:
            return self._index
        try:
            await asyncio.wait_for(asyncio.shield(build), self.rebuild_wait_s)
        except TimeoutError:
            self._given_up = build
            if self._index is None:  # the first build: words alone meanwhile
                self._index = await asyncio.to_thread(FaqIndex, await self.entries())
        return self._index

    @property
    def building(self) -> bool:
        return self._build is not None and not self._build.done()

    async def ready(self) -> FaqIndex:
        """The index of the current version, however long its build takes (a terminal chat, a test, the console)."""
        index = await self.index()
        while self.building:  # (a build that ends finds the FAQ changed meanwhile: index() starts the next)
            await asyncio.shield(self._build)
            index = await self.index()
        return index

    async def _rebuild(self) -> None:
        """Build the index of the current version; again if the FAQ changed meanwhile."""
        while True:
            version = await self.redis.get(self.version_key) or "0"
            if self._index is not None and version == self._index_version:
                return
            entries = await self.entries()
            vectors = answers = None
            if self.encoder is not None:
                vectors = await self._vectors(self.vectors_key, question_texts(entries), self.encoder.encode)
                answers = await self._vectors(self.answer_vectors_key, answer_texts(entries), self.encoder.encode_answers)
            self._index = await asyncio.to_thread(FaqIndex, entries, self.encoder, vectors, answers)  # jieba: every question
            self._index_version = version

    async def warm_up(self) -> None:
        """Start building the index and load the encoder now (in a thread), not in the middle of the first customers'
        answers; waits for the build up to REBUILD_WAIT_S (`ready()` waits for all of it)."""
        await self.index()
        if self.encoder is not None:
            await asyncio.to_thread(self.encoder.encode, ["warm up"])

    async def _vectors(self, key: str, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """The encoder's vector of every text (questions, or answers), from Redis where another process (or an earlier
        version of the FAQ) made it already; the others are made in a thread, ENCODE_CHUNK at a time (a customer's
        question, encoded meanwhile, waits for one chunk, not the whole FAQ), and stored. Vectors of texts gone go."""
        keys = [hashlib.sha1(text.encode()).hexdigest() for text in texts]
        cached = await self.redis.hmget(key, keys) if keys else []
        missing = [i for i, value in enumerate(cached) if value is None]
        rows = [None if value is None else _unpack(value) for value in cached]
        for start in range(0, len(missing), ENCODE_CHUNK):
            chunk = missing[start : start + ENCODE_CHUNK]
            made = await asyncio.to_thread(encode, [texts[i] for i in chunk])
            for n, i in enumerate(chunk):
                rows[i] = made[n]
            await self.redis.hset(key, mapping={keys[i]: _pack(rows[i]) for i in chunk})  # kept even if the build stops
        stale = set(await self.redis.hkeys(key)) - set(keys)
        if stale:
            await self.redis.hdel(key, *stale)
        return np.stack(rows) if rows else np.zeros((0, 1), dtype=np.float32)

    async def entries(self) -> list[FaqEntry]:
        raw = await self.redis.hgetall(self.entries_key)
        return await asyncio.to_thread(_entries, raw)  # tens of thousands of JSON values after a large import

    async def get(self, entry_id: str) -> FaqEntry | None:
        value = await self.redis.hget(self.entries_key, entry_id)
        return _entry(entry_id, value) if value else None

    async def add(self, question: str, answer: str, similar: Iterable[str] = ()) -> str:
        return (await self.add_many([FaqEntry("", question, answer, tuple(similar))]))[0]

    async def add_many(self, entries: list[FaqEntry]) -> list[str]:
        values = await asyncio.to_thread(_encoded, entries)  # checked, as JSON: a large import is CPU work
        ids = await self._new_ids(len(entries))
        values = dict(zip(ids, values))
        async with self.redis.pipeline(transaction=True) as pipe:  # one HSET: a large import is one command, not one each
            await pipe.hset(self.entries_key, mapping=values).incr(self.version_key).execute()
        return ids

    async def _new_ids(self, count: int) -> list[str]:
        """`count` entry ids no entry has had (none for 0)."""
        if not count:
            return []
        first = await self.redis.incrby(self.next_key, count) - count + 1
        return [str(first + i) for i in range(count)]

    async def merge_many(self, entries: list[FaqEntry]) -> None:
        """Store `entries` as an import does: an entry whose answer is already stored (spaces at the ends aside) adds
        its new questions to that entry as similar ones; the others are added. One transaction (WATCH: a concurrent
        change makes this one start again)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.entries_key)
                    changed, new = await asyncio.to_thread(_merged, await pipe.hgetall(self.entries_key), entries)
                    changed.update(zip(await self._new_ids(len(new)), new))
                    pipe.multi()
                    if changed:
                        pipe.hset(self.entries_key, mapping=changed).incr(self.version_key)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    async def add_similar(self, entry_id: str, wording: str) -> bool:
        """One more similar question for an entry (searched at once); False if the entry is gone."""
        def change(entry: FaqEntry) -> FaqEntry:
            known = one_line(wording) in entry.similar
            return entry if known else FaqEntry(entry.id, entry.question, entry.answer, (*entry.similar, one_line(wording)))

        return await self._rewrite(entry_id, change)

    async def update(self, entry_id: str, question: str, answer: str, similar: Iterable[str] = (),
                     expected: str | None = None) -> bool:
        """Replace an entry's question, answer and similar questions (searched at once); False if the entry is gone.
        ValueError (and nothing changes) for an empty or too long text; EntryChanged (nothing changes) when `expected`,
        the `digest` of the entry as the editor saw it, is not the entry's now (a wording approved meanwhile was lost)."""
        texts = tuple(dict.fromkeys(s.strip() for s in similar if s.strip()))

        def change(entry: FaqEntry) -> FaqEntry:
            if expected is not None and digest(entry) != expected:
                raise EntryChanged(entry.id)
            return FaqEntry(entry.id, question.strip(), answer.strip(), texts)

        return await self._rewrite(entry_id, change)

    async def _rewrite(self, entry_id: str, change: Callable[[FaqEntry], FaqEntry]) -> bool:
        """Read, change and write one entry as a unit (WATCH: a concurrent change makes this one start again)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.entries_key)
                    raw = await pipe.hget(self.entries_key, entry_id)
                    if not raw:
                        return False
                    value = _encoded([change(_entry(entry_id, raw))])[0]
                    pipe.multi()
                    pipe.hset(self.entries_key, entry_id, value).incr(self.version_key)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def delete(self, entry_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.entries_key, entry_id).incr(self.version_key)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def count(self) -> int:
        return await self.redis.hlen(self.entries_key)

    async def import_file(self, path: str | Path, searchable: bool = True) -> int:
        """Read (in a thread) and store a FAQ file, merged by answer (`merge_many`); the number of its entries. Searchable
        when this returns (the index built, in a thread), unless
        `searchable` is False (the demo FAQ at start-up: the bot answers meanwhile, see `index()`)."""
        entries = await asyncio.to_thread(read_faq_file, path)
        await self.merge_many(entries)
        if searchable:
            await self.ready()
        return len(entries)

    async def load_demo_if_empty(self) -> int:
        """Seed the demo FAQ once, even with several replicas starting together."""
        if await self.count() or not await self.redis.set(f"{self.entries_key}:seeding", "1", nx=True, ex=60):
            return 0
        return await self.import_file(DEMO_DATA, searchable=False)

    async def export_lines(self) -> list[str]:
        """Chat JSONL: one two-message conversation per question and similar question (what import reads)."""
        return [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": e.answer}],
                            "meta": {"faq_id": e.id}}, ensure_ascii=False)
                for e in await self.entries() for q in (e.question, *e.similar)]


class EntryChanged(Exception):
    """The entry changed since the editor read it."""


def digest(entry: FaqEntry) -> str:
    """What an entry holds, in 16 hex digits: an edit form carries it, so that saving it cannot undo a change made
    meanwhile."""
    return hashlib.sha1(json.dumps([entry.question, entry.answer, entry.similar], ensure_ascii=False).encode()).hexdigest()[:16]


def one_line(text: str) -> str:
    """A question on one line: its line breaks (and the spaces around them) as one space. An edit form lists similar
    questions one per line: a two-line wording (a customer's, learned from a tap) came back from it as two questions."""
    return _LINE_BREAKS.sub(" ", text.strip())


_LINE_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029\x0b\x0c\x1c-\x1e\x85]+\s*")


def _report(build: asyncio.Task) -> None:
    """A failed build is said in the log (callers that waited got its error; the next match starts another)."""
    if not build.cancelled() and build.exception() is not None:
        logger.warning("the FAQ index could not be rebuilt: %s", build.exception())


def read_faq_file(path: str | Path) -> list[FaqEntry]:
    """CSV `question,answer` (a header row is optional) or chat JSONL; questions sharing an answer become one entry
    with similar questions. DataError names the file and line."""
    path = Path(path)
    pairs = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    grouped: dict[str, list[str]] = {}
    for question, answer in pairs:
        grouped.setdefault(answer.strip(), []).append(question.strip())
    entries = [FaqEntry("", qs[0], answer, tuple(dict.fromkeys(qs[1:]))) for answer, qs in grouped.items()]
    for e in entries:
        try:
            _check(e)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
    return entries


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    conversations, _ = read_conversations([path])
    pairs = []
    for c in conversations:
        roles = [m["role"] for m in c.messages if m["role"] != "system"]
        if roles != ["user", "assistant"]:
            raise DataError(f"{c.origin}: a FAQ entry is one user question and one assistant answer")
        turns = [m["content"] for m in c.messages if m["role"] != "system"]
        pairs.append((turns[0], turns[1]))
    return pairs


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    pairs = []
    rows = csv.reader(io.StringIO(text))
    try:
        for lineno, row in enumerate(rows, 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{path}:{lineno}: expected two columns, question,answer")
            if lineno == 1 and [c.strip().lower() for c in row] == ["question", "answer"]:
                continue
            pairs.append((row[0], row[1]))
    except csv.Error as exc:  # a field past the csv module's limit (128 KiB), a NUL in a quoted field...
        raise DataError(f"{path}:{rows.line_num}: not readable as CSV ({exc})") from None
    if not pairs:
        raise DataError(f"{path}: no question,answer rows")
    return pairs


def _check(entry: FaqEntry) -> None:
    for text in (entry.question, entry.answer, *entry.similar):
        if not text.strip():
            raise ValueError("empty question or answer")
        if len(text) > MAX_FAQ_TEXT:
            raise ValueError(f"a question or answer over {MAX_FAQ_TEXT} characters")


def _encoded(entries: list[FaqEntry]) -> list[str]:
    for e in entries:
        _check(e)
    return [json.dumps({"question": one_line(e.question), "answer": e.answer.strip(),
                        "similar": list(dict.fromkeys(one_line(s) for s in e.similar))}, ensure_ascii=False) for e in entries]


def _merged(raw: dict[str, str], entries: list[FaqEntry]) -> tuple[dict[str, str], list[str]]:
    """What merging `entries` into the stored ones (`raw`, id -> JSON) writes: the stored entries that gain questions
    (id -> JSON) and the new ones (JSON), each checked."""
    stored: dict[str, FaqEntry] = {}
    for entry in _entries(raw):
        stored.setdefault(entry.answer.strip(), entry)  # two entries with one answer: the older takes the questions
    changed: dict[str, FaqEntry] = {}
    new: list[FaqEntry] = []
    for entry in entries:
        into = stored.get(entry.answer.strip())
        if into is None:
            new.append(entry)
            continue
        into = changed.get(into.id, into)
        known = {one_line(q) for q in (into.question, *into.similar)}
        more = tuple(dict.fromkeys(one_line(q) for q in (entry.question, *entry.similar) if one_line(q) not in known))
        if more:
            changed[into.id] = FaqEntry(into.id, into.question, into.answer, (*into.similar, *more))
    return dict(zip(changed, _encoded(list(changed.values())))), _encoded(new)


def _entries(raw: dict[str, str]) -> list[FaqEntry]:
    return sorted((_entry(entry_id, value) for entry_id, value in raw.items()), key=lambda e: int(e.id))


def _entry(entry_id: str, value: str) -> FaqEntry:
    data = json.loads(value)
    return FaqEntry(entry_id, data["question"], data["answer"], tuple(data.get("similar", ())))


def _pack(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype(np.float16).tobytes()).decode()


def _unpack(value: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype=np.float16).astype(np.float32)
