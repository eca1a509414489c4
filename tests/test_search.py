"""bot/search.py: tokenization and the normalized BM25 FAQ matcher, on the demo shop's real FAQ corpus."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import search
from bot.search import FaqEntry, FaqIndex, Match, normalize, tokenize

CORPUS = Path(__file__).resolve().parents[1] / "llmcore" / "data" / "demo_faq.chat.jsonl"


def corpus_entries() -> list[FaqEntry]:
    """One entry per distinct answer; its first question is the question, the others are similar questions."""
    grouped: dict[str, list[str]] = {}
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        grouped.setdefault(messages[1]["content"], []).append(messages[0]["content"])
    return [FaqEntry(str(i), qs[0], answer, tuple(qs[1:])) for i, (answer, qs) in enumerate(grouped.items())]


@pytest.fixture(scope="module")
def entries() -> list[FaqEntry]:
    return corpus_entries()


@pytest.fixture(scope="module")
def index(entries: list[FaqEntry]) -> FaqIndex:
    return FaqIndex(entries)


def entry_of(entries: list[FaqEntry], question: str) -> FaqEntry:
    return next(e for e in entries if question in (e.question, *e.similar))


def all_questions(entries: list[FaqEntry]) -> list[tuple[FaqEntry, str]]:
    return [(e, q) for e in entries for q in (e.question, *e.similar)]


# -- tokenize ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("How do I return my order?", ["return", "order"]),
    ("ＲＥＦＵＮＤ  Status!!", ["refund", "status"]),
    ("请问怎么退货？", ["退货"]),
    ("退款多久能到😀", ["退款", "多久", "能", "到"]),
    ("！？。 🙂 ...", []),
    ("", []),
])
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_tokenize_uses_search_mode() -> None:
    assert {"中华", "人民", "共和国", "中华人民共和国"} <= set(tokenize("中华人民共和国"))  # the long word and the words in it
    assert tokenize("I haven't got my refund, what's wrong") == ["haven", "got", "refund", "wrong"]  # contraction tails go


def test_normalize_ignores_case_width_and_punctuation() -> None:
    assert normalize("Ｗｈｅｒｅ is my package?!") == normalize("where is my package") == "whereismypackage"


# -- the demo corpus --------------------------------------------------------------------------------------

def test_corpus_is_grouped_by_answer(entries: list[FaqEntry]) -> None:
    assert len(entries) == 169 and sum(1 + len(e.similar) for e in entries) == 999


def test_every_corpus_question_matches_its_own_entry_exactly(entries: list[FaqEntry], index: FaqIndex) -> None:
    for entry, question in all_questions(entries):
        best = index.match(question, k=1)[0]
        assert (best.entry, best.score, best.matched) == (entry, 1.0, question), question


@pytest.mark.parametrize("variant", [
    lambda q: "请问" + q,
    lambda q: q.rstrip("？?！!。.") + "？？",
    lambda q: q.upper(),
    lambda q: q.replace("，", " ").replace(",", " ") + " 🙏",
])
def test_surface_variants_keep_their_entry(entries: list[FaqEntry], index: FaqIndex, variant) -> None:
    for entry, question in all_questions(entries):
        best = index.match(variant(question), k=1)[0]
        assert best.entry == entry and best.score >= 0.99, (variant(question), best)


PARAPHRASES = [  # (a corpus question, a light paraphrase: a word dropped or swapped, politeness, punctuation, case)
    ("还没发货的订单怎么取消？", "没发货的订单怎么取消"),
    ("退货运费谁出？", "请问退货的运费谁出啊"),
    ("积分会过期吗？", "积分过期吗"),
    ("怎么注册账号？", "如何注册账号呢"),
    ("下单后多久发货？", "下单多久发货！"),
    ("可以分期付款吗？", "能分期付款吗"),
    ("在线客服在哪里？", "客服在哪里"),
    ("手机摔坏了能保修吗？", "手机摔坏能保修吗"),
    ("How can I track my parcel?", "HOW CAN I TRACK MY PARCEL"),
    ("How can I track my parcel?", "track parcel please"),
    ("Who pays for return shipping?", "who pays return shipping"),
    ("Is there a warranty?", "is there any warranty"),
    ("I think my account was hacked", "my account was hacked!!"),
    ("How do I talk to a real person?", "talk to a real person"),
]


@pytest.mark.parametrize("question, paraphrase", PARAPHRASES)
def test_light_paraphrases_rank_their_entry_first(entries: list[FaqEntry], index: FaqIndex, question: str, paraphrase: str) -> None:
    best = index.match(paraphrase, k=1)[0]
    assert best.entry == entry_of(entries, question) and best.score >= 0.6, best


@pytest.mark.parametrize("text", [
    "今天股市怎么样", "what is the capital of France", "火星上有水吗", "讲个笑话", "明天天气如何",
    "how tall is mount everest", "帮我写一首诗", "谁赢了昨天的比赛", "推荐一部电影", "I like pizza",
])
def test_unrelated_questions_score_low(index: FaqIndex, entries: list[FaqEntry], text: str) -> None:
    """Below 0.4, the FAQ_SUGGEST that BM25 alone is run with (README): no "did you mean" for them."""
    assert all(m.score < 0.4 for m in index.match(text, k=len(entries)))


def test_one_shared_word_among_unknown_words_scores_low(index: FaqIndex) -> None:
    assert all(m.score < 0.35 for m in index.match("退款 比特币 量子 火星 股票", k=5))


# -- the API contract -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\t", "？！。，", "...", "🙂🙂"])
def test_blank_queries_match_nothing(index: FaqIndex, text: str) -> None:
    assert index.match(text) == []


def test_empty_index_matches_nothing() -> None:
    assert FaqIndex([]).match("怎么退货") == []


def test_k_bounds_the_matches(index: FaqIndex) -> None:
    assert len(index.match("退货 退款 运费", k=5)) == 5
    assert index.match("退货 退款 运费", k=0) == []


def test_exact_match_ignores_case_width_and_punctuation() -> None:
    entry = FaqEntry("1", "What's the Wi-Fi password?", "qinghe2026")
    assert FaqIndex([entry]).match("ｗｈａｔｓ the wifi PASSWORD") == [Match(entry, 1.0, entry.question, lexical=1.0)]


def test_ties_go_to_the_earlier_entry_and_exact_beats_clipped() -> None:
    first, second = FaqEntry("a", "退货政策", "x"), FaqEntry("b", "退货政策", "y")
    assert [m.entry.id for m in FaqIndex([first, second]).match("退货政策")] == ["a", "b"]
    same_tokens, exact = FaqEntry("s", "退货的", "x"), FaqEntry("e", "退货？", "y")  # both tokenize to ["退货"]
    assert [(m.entry.id, m.score) for m in FaqIndex([same_tokens, exact]).match("退货")] == [("e", 1.0), ("s", 1.0)]


def test_stopword_only_documents_do_not_break_the_index() -> None:
    index = FaqIndex([FaqEntry("1", "你好吗？", "很好"), FaqEntry("2", "是的", "好")])
    assert index.match("是的")[0].entry.id == "2" and index.match("退货") == []


def test_matching_is_deterministic(entries: list[FaqEntry], index: FaqIndex) -> None:
    again = FaqIndex(entries)
    for text in ("退货", "refund", "发票 抬头", "怎么 账号", "会员 积分 过期"):
        assert index.match(text, k=10) == again.match(text, k=10) == index.match(text, k=10)


def test_a_query_takes_about_a_millisecond(entries: list[FaqEntry], index: FaqIndex) -> None:
    questions = [q for _, q in all_questions(entries)]
    start = time.perf_counter()
    for q in questions:
        index.match(q)
    assert (time.perf_counter() - start) / len(questions) < 0.005  # generous: the machine is shared


@settings(max_examples=100, deadline=None)
@given(st.text(st.one_of(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                         st.sampled_from("退货款发票会员积分账号 ？！。，😀")), max_size=40), st.integers(min_value=1, max_value=8))
def test_scores_are_in_unit_interval_and_ranked(index: FaqIndex, text: str, k: int) -> None:
    matches = index.match(text, k=k)
    assert len(matches) <= k and len({m.entry.id for m in matches}) == len(matches)
    assert all(0 < m.score <= 1 for m in matches)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_the_nearest_answer_is_the_one_char_f1_ranks_first():
    """nearest_answer scores every answer at once from character postings: the same entry and F1 as char_f1 pair by
    pair (ties to the earlier entry), on texts that share some, all or none of an answer's characters."""
    import random

    from llmcore.retrieval import char_f1

    rng = random.Random(7)
    answers = ["七天内可以在订单页申请退货。", "满69元包邮，不满收8元。", "Tap Forgot password on the login page.", "满69元包邮。",
               "七天内可以在订单页申请退货。"]  # the same answer twice: the first wins the tie
    entries = [FaqEntry(str(i), f"问题{i}", a) for i, a in enumerate(answers)]
    index = FaqIndex(entries)
    pool = "".join(answers)
    texts = [*answers, "", "   ", "完全无关", "tap TAP", "满69元"]
    texts += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    for text in texts:
        scores = [char_f1(text, e.answer) for e in entries]
        best = max(scores)
        expected = (entries[scores.index(best)], best) if best > 0 else (None, 0.0)
        found = index.nearest_answer(text)
        assert found[0] == expected[0] and found[1] == pytest.approx(expected[1]), text


def test_the_spread_reads_each_entrys_nearest_wordings_only() -> None:
    """An entry's mean over its NEAREST_WORDINGS nearest wordings, whatever mix of entries with fewer and more wordings
    the FAQ holds (the demo's have five or six; one that learned many customers' wordings may have hundreds)."""
    rng = np.random.default_rng(0)
    sizes = [1, 3, 5, 6, 7, 40, 2, 12]
    entries = [FaqEntry(str(e), f"问题{e}-0", f"答案{e}", tuple(f"问题{e}-{i}" for i in range(1, n))) for e, n in enumerate(sizes)]
    index = FaqIndex(entries)
    for _ in range(5):
        cosines = rng.uniform(-1, 1, sum(sizes))
        blocks = np.split(cosines, np.cumsum(sizes)[:-1])
        expected = [np.sort(b)[::-1][:search.NEAREST_WORDINGS].mean() for b in blocks]
        assert index._nearest_mean(cosines) == pytest.approx(expected)
