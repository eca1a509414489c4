"""FAQ store: import (JSONL, CSV), export round trip, matching, refresh across replicas, demo seeding, bad files."""
import json

import pytest

from bot.faq import FaqStore, read_faq_file
from bot.search import FaqEntry
from llmcore.chats import DataError

from .conftest import FAQ_PAIRS


async def test_import_jsonl_and_match_each_question(redis, prefix, faq_file):
    faq = FaqStore(redis, prefix)
    assert await faq.import_file(faq_file) == len(FAQ_PAIRS)
    for question, answer in FAQ_PAIRS:
        [best, *_] = await faq.match(question)
        assert best.entry.answer == answer and best.score == pytest.approx(1.0)


async def test_csv_with_header_and_shared_answers_become_similar_questions(redis, prefix, tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text('question,answer\n怎么退货？,七天内可退\n"如何退货, 流程是什么",七天内可退\n几点发货？,下午四点前下单当天发\n',
                    encoding="utf-8")
    faq = FaqStore(redis, prefix)
    assert await faq.import_file(path) == 2
    entries = await faq.entries()
    assert entries[0].question == "怎么退货？" and entries[0].similar == ("如何退货, 流程是什么",)
    [best, *_] = await faq.match("如何退货, 流程是什么")
    assert best.entry.id == entries[0].id and best.matched == "如何退货, 流程是什么"


async def test_export_round_trips(redis, prefix, faq_file, tmp_path):
    faq = FaqStore(redis, prefix)
    await faq.import_file(faq_file)
    out = tmp_path / "export.jsonl"
    out.write_text("\n".join(await faq.export_lines()) + "\n", encoding="utf-8")
    again = FaqStore(redis, prefix + "copy:")
    await again.import_file(out)
    assert [(e.question, e.answer) for e in await again.entries()] == [(e.question, e.answer) for e in await faq.entries()]


async def test_a_change_by_another_replica_is_seen(redis, prefix):
    first, second = FaqStore(redis, prefix), FaqStore(redis, prefix)
    assert await first.match("营业时间是几点") == []
    entry_id = await second.add("营业时间是几点？", "每天9点到21点。")
    [best] = await first.match("营业时间是几点")
    assert best.entry.answer == "每天9点到21点。"
    assert await second.delete(entry_id) and not await second.delete(entry_id)
    assert await first.match("营业时间是几点") == []


async def test_demo_faq_seeds_once_when_empty(redis, prefix):
    faq = FaqStore(redis, prefix)
    seeded = await faq.load_demo_if_empty()
    assert seeded > 100 and await faq.count() == seeded
    assert await FaqStore(redis, prefix).load_demo_if_empty() == 0
    [best, *_] = await faq.match("怎么退货")
    assert best.score >= 0.75 and "退" in best.entry.answer


@pytest.mark.parametrize("content, suffix, fragment", [
    ('{"messages": [{"role": "user", "content": "q"}]}\n', ".jsonl", "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
     '{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}\n', ".jsonl", "one user question"),
    ("not json\n", ".jsonl", ":1:"),
    ("only one column\n", ".csv", ":1: expected two columns"),
    ("q,\n", ".csv", "expected two columns"),
    ("", ".csv", "no question,answer rows"),
    ("q," + "x" * 200_000 + "\n", ".csv", ":1: not readable as CSV"),  # past the csv module's field limit
    ("[" * 100_000 + "]" * 100_000 + "\n", ".jsonl", ":1: nested too deeply"),  # a RecursionError: "something went wrong"
])
def test_bad_files_say_where(tmp_path, content, suffix, fragment):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        read_faq_file(path)


def test_oversized_entries_are_refused(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 9000}]}) + "\n")
    with pytest.raises(DataError, match="over 8000"):
        read_faq_file(path)


async def test_an_import_merges_by_answer_and_adds_nothing_twice(redis, prefix, faq_file, tmp_path):
    """Importing a file again, or an export back into its own FAQ, duplicated every entry: each was matched twice,
    and "did you mean" offered one answer under two buttons."""
    faq = FaqStore(redis, prefix)
    await faq.import_file(faq_file)
    before = await faq.entries()
    out = tmp_path / "export.jsonl"
    out.write_text("\n".join(await faq.export_lines()) + "\n", encoding="utf-8")
    await faq.import_file(out)
    await faq.import_file(faq_file)
    assert await faq.entries() == before
    first = before[0]
    more = tmp_path / "more.csv"
    more.write_text(f"question,answer\n换个说法问一下,{first.answer}\n全新的问题？,全新的回答。\n", encoding="utf-8")
    assert await faq.import_file(more) == 2
    after = await faq.entries()
    assert len(after) == len(before) + 1 and after[-1].question == "全新的问题？"
    assert after[0] == FaqEntry(first.id, first.question, first.answer, (*first.similar, "换个说法问一下"))
    [best, *_] = await faq.match("换个说法问一下")
    assert best.entry.id == first.id and best.score == pytest.approx(1.0)
