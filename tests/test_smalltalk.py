"""Small talk: only messages that are nothing but a greeting, thanks, goodbye, "ok" or "are you a bot?" get a canned
reply, in the message's language; such replies are counted in /stats, left out of the training data and get no
rating buttons."""
import json
import time
from pathlib import Path

import pytest

from bot.exchanges import Exchange, ExchangeLog
from bot.faq import FaqStore
from bot.smalltalk import INTENTS, REPLIES, normalize, reply_to
from bot.stats import collect, format_stats
from bot.texts import CJK
from bot.trainingset import build_training_set
from llmcore.chats import DEMO_DATA

DATA = Path(__file__).parent / "data"

SMALL_TALK = [
    ("你好", "greeting", "zh"),
    ("您好！", "greeting", "zh"),
    ("你好呀～", "greeting", "zh"),
    ("在吗？", "greeting", "zh"),
    ("客服你好", "greeting", "zh"),
    ("hi there", "greeting", "en"),
    ("Hello Kefu 👋", "greeting", "en"),
    ("Good morning!", "greeting", "en"),
    ("谢谢", "thanks", "zh"),
    ("谢谢你", "thanks", "zh"),
    ("好的，谢谢", "thanks", "zh"),
    ("非常感谢您的帮助！", "thanks", "zh"),
    ("谢谢客服小助手", "thanks", "zh"),
    ("辛苦了", "thanks", "zh"),
    ("thanks", "thanks", "en"),
    ("Thank you so much!!", "thanks", "en"),
    ("thank you very much 🙏", "thanks", "en"),
    ("ok thanks", "thanks", "en"),
    ("Thanks for your help", "thanks", "en"),
    ("再见", "goodbye", "zh"),
    ("谢谢，再见", "goodbye", "zh"),
    ("拜拜~", "goodbye", "zh"),
    ("没事了，谢谢", "goodbye", "zh"),
    ("bye", "goodbye", "en"),
    ("See you later!", "goodbye", "en"),
    ("that's all, thanks", "goodbye", "en"),
    ("好的", "ack", "zh"),
    ("嗯嗯", "ack", "zh"),
    ("收到", "ack", "zh"),
    ("OK", "ack", "en"),
    ("got it", "ack", "en"),
    ("你是谁", "who", "zh"),
    ("你叫什么名字？", "who", "zh"),
    ("who are you?", "who", "en"),
    ("What can you do?", "who", "en"),
    ("你是机器人吗", "robot", "zh"),
    ("是真人吗？", "robot", "zh"),
    ("你是人工还是机器人", "robot", "zh"),
    ("你好，你是人工客服吗？", "robot", "zh"),
    ("are you a bot?", "robot", "en"),
    ("Are you a real person?", "robot", "en"),
    ("Are you human?", "robot", "en"),
    ("hi, am I talking to a bot?", "robot", "en"),
]

NOT_SMALL_TALK = [
    "你好，我想退货",
    "您好，请问运费怎么算？",
    "在吗？我的快递到哪了",
    "谢谢，退款什么时候到账",
    "谢谢你们，但是快递太慢了",
    "好的，那我什么时候能收到退款？",
    "再见之前想问下发票怎么开",
    "你是机器人吗？能帮我退款吗",
    "hi, where is my order?",
    "Hello, can I pay with Alipay?",
    "thanks, but how do I get a refund",
    "Thanks for the quick delivery, but the box was broken",
    "ok so how do I cancel my order",
    "bye the way, do you ship to Hong Kong?",
    "怎么转人工",  # asks for a person: the FAQ knows how
    "人工客服",
    "可以吗",  # a question about something said before
    "客服",
    "哈哈",
    "who are you shipping with?",
    "are you open on sunday?",
    "what is your return policy",
    "好评返现吗",
    "怎么退货",
    "谢谢" * 30,  # past MAX_CHARS: not a chat, whatever it is
]


@pytest.mark.parametrize("text, intent, lang", SMALL_TALK)
def test_small_talk_gets_its_intent_in_the_messages_language(text, intent, lang):
    chat = reply_to(text)
    assert chat is not None, text
    assert (chat.intent, chat.lang) == (intent, lang)
    assert chat.text == REPLIES[intent][lang]


@pytest.mark.parametrize("text", NOT_SMALL_TALK)
def test_a_message_with_a_real_question_is_not_small_talk(text):
    assert reply_to(text) is None


@pytest.mark.parametrize("intent", INTENTS)
def test_replies_are_written_in_their_language(intent):
    assert CJK.search(REPLIES[intent]["zh"]) and not CJK.search(REPLIES[intent]["en"])


def test_the_robot_answer_is_honest_and_points_to_a_human():
    zh, en = reply_to("你是机器人吗").text, reply_to("are you a bot?").text
    assert "不是真人" in zh and "人工客服" in zh and "/human" in zh
    assert "automated" in en and "not a person" in en and "/human" in en


def test_normalize_keeps_only_letters_and_digits_in_lower_case():
    assert normalize("Ｔhank you so much!! 🙏") == "thankyousomuch"
    assert normalize("好的，谢谢～ ") == "好的谢谢"


def _exchange(question: str, answer: str, source: str, latency_ms: int = 1) -> Exchange:
    return Exchange(chat_id=3, user_id=3, question=question, answer=answer, source=source, score=1.0, version=None, latency_ms=latency_ms)


async def test_small_talk_is_not_training_data_unless_asked_for(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(_exchange("谢谢", REPLIES["thanks"]["zh"], "smalltalk"))
    await log.append(_exchange("运费多少？", "满69包邮。", "faq"))
    assert [r["meta"]["source"] async for r in log.conversations()] == ["faq"]
    assert [r["meta"]["source"] async for r in log.conversations(include_smalltalk=True)] == ["smalltalk", "faq"]
    training = await build_training_set(log, FaqStore(redis, prefix))
    assert [r["messages"][0]["content"] for r in training] == ["运费多少？"]


async def test_stats_count_small_talk_but_not_its_latency(redis, prefix):
    log = ExchangeLog(redis, prefix, retention_days=30)
    await log.append(_exchange("你好", REPLIES["greeting"]["zh"], "smalltalk", latency_ms=0))
    await log.append(_exchange("hi", REPLIES["greeting"]["en"], "smalltalk", latency_ms=0))
    await log.append(_exchange("运费多少？", "满69包邮。", "faq", latency_ms=30))
    stats = await collect(log, now=time.time())
    assert stats.by_source["smalltalk"] == 2 and stats.by_source["faq"] == 1
    assert stats.latencies_ms == [30]
    assert "smalltalk 2" in format_stats(stats, "v0001")


def test_small_talk_replies_get_no_rating_buttons():
    from bot.handlers import _buttons
    from bot.pipeline import Reply
    from bot.texts import texts

    def callbacks(source: str) -> list[str]:
        reply = Reply("…", source, 1.0, entry_id="1-0")
        return [b.callback_data for row in _buttons(reply, texts("zh")).inline_keyboard for b in row]

    assert callbacks("smalltalk") == []
    assert callbacks("faq") == ["fb:1-0:up", "fb:1-0:down"]


def test_no_demo_question_is_taken_for_small_talk():
    """Every corpus question, paraphrase and off-topic question carries a real question (tests/data/README.md)."""
    corpus = [json.loads(line)["messages"][0]["content"] for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    data = [json.loads(line)["question"] for name in ("demo_paraphrases.jsonl", "offtopic.jsonl")
            for line in (DATA / name).read_text(encoding="utf-8").splitlines()]
    assert len(corpus) > 400 and len(data) > 150
    assert [q for q in corpus + data if reply_to(q) is not None] == []
