"""Choosing the answer among candidates: the consensus wins, the target turn is never a candidate, the API is unchanged."""
import json
import shutil
from dataclasses import replace

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from llmcore.chats import Conversation
from llmcore.evaluate import Turn, answer_turns
from llmcore.prompting import EVIDENCE_FILE, PromptRecipe
from llmcore.registry import Registry
from llmcore.retrieval import EvidenceIndex, Hit, char_f1
from llmcore.sampling import SamplingParams
from llmcore.selection import DEFAULT_SELECTION, GREEDY, SAMPLE_SEED, Selection, mbr_choice
from llmcore.server import create_app
from llmcore.settings import ServeSettings
from llmcore.worker import Worker

from .conftest import FAQ_PAIRS


def test_mbr_picks_the_consensus_candidate():
    texts = ["您好，这家酒店的电话是010-1234。", "电话是010-1234。", "我不知道。", "这家酒店的电话是010-1234。"]
    best, consensus = mbr_choice(texts)
    assert texts[best] == "这家酒店的电话是010-1234。"  # closest to all the others; the stray "我不知道" never wins
    assert 0 < consensus < 1


def test_mbr_counts_each_candidate_once_and_scores_as_char_f1():
    """The pairwise shortcut gives what the mean of char_f1 to the others gives, on real answers of every length."""
    texts = [a for _, a in FAQ_PAIRS] + ["", "  ", "好的 好的", "OK, thanks!"]
    for start in range(0, len(texts), 5):
        group = texts[start : start + 7]
        means = [sum(char_f1(t, o) for j, o in enumerate(group) if j != i) / (len(group) - 1) for i, t in enumerate(group)]
        best, consensus = mbr_choice(group)
        assert consensus == pytest.approx(max(means)) and means[best] == pytest.approx(max(means))


def test_mbr_reads_a_bounded_prefix_of_hostile_evidence():
    """A request may bring 4 evidence texts of 32,768 characters, all distinct (e.g. from U+20000 on): the choice
    reads each text's first MBR_CHARS, row by row, so it allocates megabytes, not the every-pair matrix of 29 x 29 x
    131,072 counts (441 MB) that held the event loop for ~1.5 s; and it chooses as among those prefixes."""
    import tracemalloc

    from llmcore.selection import MBR_CHARS

    hostile = ["".join(map(chr, range(0x20000 + i * 32_768, 0x20000 + (i + 1) * 32_768))) for i in range(4)]
    answers = [a for _, a in FAQ_PAIRS]
    texts = answers + hostile
    weights = [3.0] * len(hostile) + [1.0] * len(answers)
    tracemalloc.start()
    try:
        best, consensus = mbr_choice(texts, weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20
    assert (best, consensus) == mbr_choice([t[:MBR_CHARS] for t in texts], weights)
    assert best < len(answers)  # a text of unrelated characters agrees with nothing


def test_the_greedy_answers_vote_weighs_more_than_a_stored_answers():
    """The greedy answer is the only candidate that read the conversation: weighted, its vote lifts the stored answer
    that agrees with it over the formula the stored answers to other questions share."""
    greedy = "故宫的地址是北京市东城区景山前街4号。"
    stored = ["推荐您去颐和园。", "推荐您去颐和园看看。", "故宫在东城区景山前街4号。", "推荐您去天坛公园。"]
    assert mbr_choice([greedy, *stored])[0] == 1  # one vote each: "推荐您去颐和园" wins
    assert mbr_choice([greedy, *stored], [3.0, 1.0, 1.0, 1.0, 1.0])[0] == 3  # the stored answer about 故宫's address
    hits = [Hit(text, 0.5, "q") for text in stored]
    assert Selection(retrieved=4).choose([(greedy, -0.3)], hits).text == stored[0]
    assert Selection(retrieved=4, greedy_weight=3.0).choose([(greedy, -0.3)], hits).text == stored[2]


def test_the_requests_own_evidence_is_a_candidate_voting_like_the_greedy_answer():
    """The bot sends the FAQ answers that matched the question by meaning; the version's word search found a shipping
    formula. With the FAQ answer voting like the greedy answer, the answer about returns wins, reported as evidence."""
    greedy = "退货请在七天内到订单页申请，谢谢。"
    faq = "七天内可以在订单页申请退货。"
    hits = [Hit(text, 0.5, "q") for text in ("满99元包邮。", "订单满99元包邮。", "您好，请问有什么可以帮您？")]
    selection = Selection(retrieved=3, greedy_weight=3.0)
    assert selection.choose([(greedy, -0.5)], hits).text == "订单满99元包邮。"
    choice = selection.choose([(greedy, -0.5)], hits, [faq])
    assert (choice.text, choice.source, choice.index, choice.confidence) == (faq, "evidence", 0, -0.5)
    assert Selection(retrieved=3, greedy_weight=1.0).choose([(greedy, -0.5)], hits, [faq]).source == "retrieved"  # its vote is the greedy's


def test_each_variant_is_prompted_with_the_next_stored_answers():
    hits = [Hit(f"答案{i}", 1.0 - i / 10, f"问题{i}") for i in range(9)]
    selection, recipe = Selection(retrieved=8, variants=3), PromptRecipe(evidence_k=2)
    assert [[h.response for h in ev] for ev in selection.variant_evidence(recipe, (), hits)] == [
        ["答案2", "答案3"], ["答案4", "答案5"], ["答案6", "答案7"]]  # the greedy answer's prompt took 答案0 and 答案1
    assert selection.variant_evidence(recipe, [" "], hits) == selection.variant_evidence(recipe, (), hits)  # blank: none
    assert selection.variant_evidence(recipe, ["七天内可以退货。"], hits) == []  # the request's own evidence: no variants
    assert len(selection.variant_evidence(recipe, (), hits[:5])) == 2 and Selection(retrieved=8).variant_evidence(recipe, (), hits) == []
    assert selection.variant_evidence(PromptRecipe(evidence_k=0), (), hits) == []  # a version without evidence in its prompts
    asked = [{"role": "user", "content": "退货运费多少，客服电话多少，发票呢？"}]
    assert len(Selection(retrieved=2).retrieve(_index(), asked, evidence_k=2)) == 2
    assert len(Selection(retrieved=2, variants=3).retrieve(_index(), asked, evidence_k=2)) == 8  # the prompts' share too


def _index() -> EvidenceIndex:
    return EvidenceIndex.build([Conversation([{"role": "user", "content": q + s}, {"role": "assistant", "content": a + s}])
                                for q, a in FAQ_PAIRS for s in ("", "呢", "吧")])


def test_a_variant_votes_as_the_greedy_answer_and_is_reported_as_one():
    """Two greedy answers written from different evidence agree on the address; counted like the greedy answer (not as
    a draw), the variant's vote carries the address over the formula the stored answers share, and the answer chosen
    may be the variant's own, reported as such with its own confidence."""
    greedy, variant = "故宫的地址是景山前街4号。", "故宫在北京市东城区景山前街4号。"
    hits = [Hit(text, 0.5, "q") for text in ("推荐您去颐和园。", "推荐您去颐和园看看。", "推荐您去颐和园吧。", "故宫在东城区。")]
    generated = [(greedy, -0.3), (variant, -0.6)]
    assert Selection(retrieved=4, samples=1, greedy_weight=2.0).choose(generated, hits).text == "推荐您去颐和园。"
    choice = Selection(retrieved=4, variants=1, greedy_weight=2.0).choose(generated, hits, variants=1)
    assert (choice.text, choice.source, choice.index, choice.confidence) == (variant, "variant", 1, -0.6)


def test_mbr_ties_go_to_the_first_candidate_and_one_candidate_is_itself():
    assert mbr_choice(["甲", "乙", "丙"])[0] == 0
    assert mbr_choice(["好的"]) == (0, 1.0)


def test_a_retrieved_answer_wins_when_the_samples_agree_with_it_and_keeps_the_greedy_confidence():
    selection = Selection(samples=2, retrieved=2)
    generated = [("推荐您去故宫。", -0.4), ("地址是北京东城区景山前街4号。", -1.0), ("地址是东城区景山前街4号。", -1.1)]
    hits = [Hit("故宫的地址是北京市东城区景山前街4号。", 0.8, "故宫在哪"), Hit("不客气。", 0.2, "谢谢")]
    choice = selection.choose(generated, hits)
    assert choice.source == "retrieved" and choice.text == hits[0].response
    assert choice.confidence == -0.4 and choice.index == 0


def test_retrieved_beyond_the_setting_are_not_candidates():
    generated = [("好的。", -0.5)]
    hits = [Hit("不客气。", 0.9, "谢谢"), Hit("不客气。", 0.8, "多谢")]
    assert Selection(samples=0, retrieved=1).choose(generated, hits).source == "greedy"  # a tie: greedy first


def test_candidate_params_are_the_request_then_seeded_draws():
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.2, max_new_tokens=40)
    params = Selection(samples=3, retrieved=0, temperature=0.7).candidate_params(greedy)
    assert params[0] is greedy
    assert [p.seed for p in params[1:]] == [SAMPLE_SEED, SAMPLE_SEED + 1, SAMPLE_SEED + 2]
    assert all(p.temperature == 0.7 and p.repetition_penalty == 1.2 and p.max_new_tokens == 40 for p in params[1:])
    assert GREEDY.candidate_params(greedy) == [greedy] and not GREEDY.enabled


def test_selection_travels_with_the_version(tmp_path):
    assert Selection.load(tmp_path) == GREEDY  # a version from before selection answers greedily
    Selection(samples=3, retrieved=5, greedy_weight=2.5).save(tmp_path)
    assert Selection.load(tmp_path) == Selection(samples=3, retrieved=5, greedy_weight=2.5)
    (tmp_path / "select.json").write_text('{"samples": 0, "retrieved": 8, "temperature": 0.8}')  # written before weights
    assert Selection.load(tmp_path) == Selection(retrieved=8, greedy_weight=1.0)  # chooses as it always did
    for bad in ({"samples": -1}, {"retrieved": 33}, {"greedy_weight": 0.5}, {"greedy_weight": 100.0}, {"variants": -1},
                {"variants": 9}):
        with pytest.raises(ValueError):
            Selection(**bad)


def test_the_target_turn_is_never_a_candidate():
    """A held-out turn stored in the index (a copy, or the same question asked before) is not retrieved for itself."""
    conversations = [Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in FAQ_PAIRS]
    index = EvidenceIndex.build(conversations)
    selection = Selection(samples=0, retrieved=8)
    for question, answer in FAQ_PAIRS:
        retrieved = selection.retrieve(index, [{"role": "user", "content": question}])
        assert answer not in [h.response for h in retrieved]


def test_an_answer_the_model_knows_is_kept(tiny_models):
    """A version that learned the FAQ by heart keeps its own answers: the stored answers to the other questions (the
    default's 24 retrieved) do not outvote them."""
    loaded = Registry(tiny_models).load()
    turns = [Turn([{"role": "user", "content": q}], a) for q, a in FAQ_PAIRS]
    params = SamplingParams(temperature=0.0, repetition_penalty=1.2, max_new_tokens=40)
    greedy = answer_turns(loaded.model, loaded.tokenizer, turns, params, loaded.index, loaded.recipe, GREEDY)
    chosen = answer_turns(loaded.model, loaded.tokenizer, turns, params, loaded.index, loaded.recipe, DEFAULT_SELECTION)
    assert [c.answer for c in chosen] == [g.answer for g in greedy]
    assert sum(c.f1 for c in chosen) / len(chosen) >= 0.9


@pytest.fixture(scope="module")
def choosing_models(tiny_models, tmp_path_factory):
    """tiny_models' version, copied into a registry of its own with a select.json: 3 draws and 2 stored answers."""
    root = tmp_path_factory.mktemp("choosing") / "reg"
    root.mkdir()
    shutil.copytree(tiny_models / "v0001", root / "v0001")
    Selection(samples=3, retrieved=2).save(root / "v0001")
    Registry(root).promote("v0001")
    return root


@pytest.fixture
async def client(choosing_models):
    worker = Worker(Registry(choosing_models), torch.device("cpu"), max_batch=8)
    client = TestClient(TestServer(create_app(ServeSettings(models=choosing_models, request_timeout_s=30), worker)))
    await client.start_server()
    yield client
    await client.close()


def ask(question: str, **extra) -> dict:
    return {"model": "kefu", "messages": [{"role": "user", "content": question}], "max_tokens": 40, **extra}


async def test_the_served_answer_is_the_one_evaluation_measures(client, choosing_models):
    """The bot's request, unchanged: the answer chosen by the server is exactly the one `llmcore eval` scores."""
    loaded = Registry(choosing_models).load()
    questions = [q for q, _ in FAQ_PAIRS] + ["运费怎么算？", "你们的电话？"]
    params = SamplingParams(temperature=0.0, repetition_penalty=1.2, max_new_tokens=40)
    measured = answer_turns(loaded.model, loaded.tokenizer, [Turn([{"role": "user", "content": q}], "") for q in questions],
                            params, loaded.index, loaded.recipe, loaded.selection)
    for question, expected in zip(questions, measured):
        response = await client.post("/v1/chat/completions", json=ask(question, temperature=0, repetition_penalty=1.2))
        assert response.status == 200
        body = await response.json()
        assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.answer}
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        kefu = body["kefu"]
        assert kefu["chosen"]["source"] in ("greedy", "sample", "retrieved")  # no evidence of the request's own
        assert kefu["confidence"] == pytest.approx(expected.confidence, abs=1e-4)  # the engine batches; evaluation too


async def test_a_chosen_answer_is_deterministic_and_streams_the_same_text(client):
    bodies = [await (await client.post("/v1/chat/completions", json=ask("运费怎么算？"))).json() for _ in range(2)]
    assert bodies[0]["choices"][0]["message"] == bodies[1]["choices"][0]["message"]
    response = await client.post("/v1/chat/completions", json=ask("运费怎么算？", stream=True))
    events = [json.loads(line[6:]) for line in (await response.text()).splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == bodies[0]["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] and events[-1]["kefu"]["chosen"] == bodies[0]["kefu"]["chosen"]


async def test_evidence_the_request_brings_is_among_the_candidates(client, choosing_models):
    """A question the tiny model does not know: its greedy answer and draws disagree, and a text the request brings four
    times (four votes of the greedy answer's weight) is the answer chosen, from the evidence; without it, as before."""
    vouched = "本店支持七天无理由退货，请在订单页提交申请。"
    body = await (await client.post("/v1/chat/completions", json=ask("周末几点关门？", evidence=[vouched] * 4))).json()
    assert body["choices"][0]["message"]["content"] == vouched and body["kefu"]["chosen"]["source"] == "evidence"
    assert body["usage"]["completion_tokens"] == len(Registry(choosing_models).load().tokenizer.encode(vouched))
    body = await (await client.post("/v1/chat/completions", json=ask("周末几点关门？"))).json()
    assert body["choices"][0]["message"]["content"] != vouched and body["kefu"]["chosen"]["source"] != "evidence"


async def test_sampled_and_logprob_requests_are_answered_as_before(client):
    for extra in ({"temperature": 0.8, "seed": 3}, {"logprobs": True}, {"stop": ["。"]}):
        body = await (await client.post("/v1/chat/completions", json=ask("怎么退货？", **extra))).json()
        assert "chosen" not in body["kefu"] and body["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def varying_models(tiny_models, tmp_path_factory):
    """tiny_models' version with a stored answer in each prompt, an index of three wordings per FAQ pair (a question is
    never its own evidence: the other wordings are), and a select.json with two variants."""
    root = tmp_path_factory.mktemp("varying") / "reg"
    root.mkdir()
    shutil.copytree(tiny_models / "v0001", root / "v0001")
    _index().save(root / "v0001" / EVIDENCE_FILE)
    PromptRecipe(evidence_k=1, max_history=4).save(root / "v0001")
    Selection(retrieved=4, greedy_weight=3.0, variants=2).save(root / "v0001")
    Registry(root).promote("v0001")
    return root


QUESTIONS = [q for q, _ in FAQ_PAIRS] + ["运费怎么算？", "你们的电话？", "周末几点关门？", "发票和退货"]


async def test_variants_are_served_as_evaluation_measures_them_and_only_into_spare_slots(varying_models):
    """With room in the batch the server writes the variants (over twice the tokens: the greedy answer and up to two
    variants) and chooses as `llmcore eval` does; with none (one slot, the greedy answer's) it chooses among the greedy
    answer and the stored ones, as evaluation without variants does: never refusing or waiting for them."""
    loaded = Registry(varying_models).load()
    params = SamplingParams(temperature=0.0, repetition_penalty=1.2, max_new_tokens=40)
    turns = [Turn([{"role": "user", "content": q}], "") for q in QUESTIONS]
    generated = {}
    for max_batch in (8, 1):
        selection = loaded.selection if max_batch > 1 else replace(loaded.selection, variants=0)
        measured = answer_turns(loaded.model, loaded.tokenizer, turns, params, loaded.index, loaded.recipe, selection)
        worker = Worker(Registry(varying_models), torch.device("cpu"), max_batch=max_batch)
        client = TestClient(TestServer(create_app(ServeSettings(models=varying_models, request_timeout_s=30), worker)))
        await client.start_server()
        try:
            for question, expected in zip(QUESTIONS, measured):
                body = await (await client.post("/v1/chat/completions", json=ask(question, temperature=0, repetition_penalty=1.2))).json()
                assert body["choices"][0]["message"]["content"] == expected.answer, question
                assert body["kefu"]["chosen"]["source"] in ("greedy", "variant", "retrieved")
                assert body["usage"]["completion_tokens"] == len(loaded.tokenizer.encode(expected.answer))
        finally:
            await client.close()
        generated[max_batch] = worker.metrics.registry.get_sample_value("kefu_llm_generated_tokens_total")
    assert generated[8] > 2 * generated[1] > 0
