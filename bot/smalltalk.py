"""Small talk: greetings, thanks, goodbyes, "ok", "who are you?" and "are you a bot?", answered with a canned
reply in the message's language before the FAQ is asked.

Only a message that is nothing but small talk matches: the text is normalised (NFKC, lower case, letters and
digits only) and must be tiled end to end by the phrases below, with a few fillers (啊, 呀, "oh") and ways to
address the bot (客服, 小助手, "bot"). "你好，我想退货" or "thanks, but how do I get a refund" carry a question
and go on to the FAQ and the model.

    chat = reply_to("谢谢你！")
    chat.intent, chat.lang, chat.text      # "thanks", "zh", "不客气！…"
    reply_to("你好，我想退货")                # None
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.texts import CJK

MAX_CHARS = 40  # normalised; longer messages are never just small talk


def _any(*phrases: str) -> str:
    return "(?:" + "|".join(phrases) + ")"


# One pattern per intent, over the normalised text (no spaces, no punctuation); zh and en side by side.
GREETING = _any("(?:你|您)好(?:吗|么)?", "你们好", "大家好", "哈喽", "哈啰", "嗨", "早安",
                "早上好", "上午好", "中午好", "下午好", "晚上好",
                "在吗", "在么", "在嘛", "在不在", "有人吗", "有人在吗", "有人在不",
                "hi+", "hello+", "hey+", "hiya", "heya", "howdy", "hallo", "greetings", "yo",
                "good(?:morning|afternoon|evening|day)", "morning", "evening", "(?:nice|pleased|glad)tomeet(?:you|u)",
                "how(?:are|r)(?:you|u)(?:doing)?(?:today)?", "howsitgoing", "howdoyoudo", "whatsup", "sup",
                "(?:is)?any(?:one|body)(?:there|here|around|online)", "(?:are)?(?:you|u)there")
THANKS = _any("(?:非常|十分|真的|真是|太|万分)?(?:谢谢|多谢|感谢|谢了|谢啦|感恩|辛苦)(?:你们|你|您|大家)?"
              "(?:的)?(?:耐心)?(?:帮助|帮忙|解答|回答|回复|服务)?(?:了|啦)?",
              "麻烦(?:你|您)?(?:了|啦)",
              "(?:many|big|huge)?(?:thanks|thank(?:you|u|ya)|thx|thnx|tnx|ty|tysm|cheers|3q"
              "|(?:i)?appreciate(?:it|that)|(?:much)?appreciated)"
              "(?:so|very)?(?:much|alot|loads|tons|again)?"
              "(?:for(?:the|your|all(?:the|your)?)?(?:help|helping|support|answer|info|information|reply|time|assistance))?")
GOODBYE = _any("再见", "拜拜", "拜", "回头见", "下次见", "明天见", "晚安", "不用了", "没有了",
               "(?:那)?(?:就|先)这样(?:吧)?", "没(?:有)?(?:别的|其他的?)?(?:事|事情|问题)了",
               "(?:good)?bye+(?:bye)?", "byebye", "seeya", "cya", "see(?:you|u|ya)(?:later|soon|tomorrow)?", "goodnight",
               "takecare", "later", "farewell", "have(?:a|anice|agood|agreat)(?:day|evening|weekend|night|one)",
               "thats(?:all|it)", "thatisall")
ACK = _any("好(?:的|滴|嘞|哒|吧|呢|的呢|的吧)?", "行(?:吧)?", "可以(?:了)?", "嗯+", "哦+", "噢+",
           "收到(?:了)?", "明白(?:了)?", "知道了", "了解(?:了)?", "懂了", "没问题",
           "ok+", "okay", "okey", "kk", "alright", "allright", "sure", "cool", "great", "good", "nice", "perfect",
           "awesome", "fine", "gotit", "understood", "isee", "noted", "roger")
WHO = _any("(?:请问)?(?:你|您)(?:是|叫)(?:谁|哪位|什么|啥)(?:名字)?", "(?:你|您)是(?:干|做)(?:什么|啥|嘛)的",
           "(?:你|您)(?:都)?(?:能|会|可以)(?:帮我)?(?:做|干)?(?:什么|啥|嘛|些什么)",
           "who(?:are|r)(?:you|u)", "whatareyou", "what(?:is|s)?yourname", "whatcan(?:you|u)do(?:forme)?",
           "whatcan(?:you|u)helpmewith", "howcan(?:you|u)help(?:me)?", "whatdo(?:you|u)do")
_HUMAN_ZH = _any("机器人", "真人", "人工客服", "人工", "活人", "人", "ai", "人工智能", "机器", "bot", "robot",
                 "自动回复", "程序", "智能客服")
_HUMAN_EN = _any("robot", "bot", "chatbot", "human", "humanbeing", "person", "machine", "ai", "computer", "program", "real",
                 "automated(?:reply|response|chat|service|message)?", "liveagent", "liveperson")
ROBOT = _any("(?:请问)?(?:你|您|你们|这|这个|这边)?(?:到底)?(?:是不是|是)(?:个|一个)?(?:真的?)?" + _HUMAN_ZH
             + "(?:吗|么|嘛|吧|不是|呢)?",
             "(?:你是|这是)?(?:真人|人工|人)还是(?:机器人|机器|ai|自动回复|程序)(?:吗|呢)?",
             "(?:你是|这是)?(?:机器人|机器|ai|自动回复)还是(?:真人|人工|人)(?:吗|呢)?",
             "(?:真人|机器人)(?:吗|么|嘛)", "有(?:没有)?(?:真人|活人)(?:吗|么)?",
             "(?:are|r)(?:you|u)(?:a|an)?(?:real)?" + _HUMAN_EN, "(?:youre|youare|ur)(?:a|an)(?:real)?" + _HUMAN_EN,
             "(?:isthis|amitalkingto|amitalkingwith|amichattingwith|amispeakingto|amispeakingwith)(?:a|an)?(?:real)?" + _HUMAN_EN)
# Pieces that may sit between the phrases but say nothing on their own.
FILLER = _any("[啊呀哈啦嗯哦噢喔哇]+", "那", "那就", "也", "oh", "ah", "um+", "uh+", "hm+", "well", "so", "and")
ADDRESS = _any("客服小助手", "小助手", "客服", "助手", "亲亲", "亲", "小哥哥?", "小姐姐", "美女", "老板", "店家", "掌柜的?",
               "kefu", "bot", "there", "everyone", "all", "guys", "team", "friend", "mate")

INTENTS = ("robot", "who", "goodbye", "thanks", "greeting", "ack")  # most specific first: "hi, are you a bot?" is "robot"
PATTERNS = {"robot": ROBOT, "who": WHO, "goodbye": GOODBYE, "thanks": THANKS, "greeting": GREETING, "ack": ACK}

REPLIES = {
    "greeting": {"zh": "您好！我是客服小助手 Kefu，很高兴为您服务。请直接告诉我您的问题，比如订单、配送、退换货或发票。",
                 "en": "Hello! I'm Kefu, the customer-service assistant. How can I help? "
                       "Ask me about orders, delivery, returns or invoices."},
    "thanks": {"zh": "不客气！还有其他问题随时问我。",
               "en": "You're welcome! Let me know if there's anything else I can help with."},
    "goodbye": {"zh": "感谢您的咨询，再见！有需要随时来找我。",
                "en": "Thanks for stopping by, goodbye! I'm here whenever you need me."},
    "ack": {"zh": "好的。还有什么可以帮您的吗？",
            "en": "OK! Is there anything else I can help you with?"},
    "who": {"zh": "我是客服小助手 Kefu，一个自动回复的客服助手，可以解答订单、配送、退换货、退款、支付、发票和会员等常见问题。"
                  "需要真人帮忙时，发送 /human 即可转接人工客服。",
            "en": "I'm Kefu, an automated customer-service assistant. I can answer questions about orders, delivery, returns, "
                  "refunds, payment, invoices and membership. Send /human any time to reach a human colleague."},
    "robot": {"zh": "我是自动客服助手（机器人），不是真人。常见问题我可以马上回答；如果您想和真人沟通，发送 /human 即可转接人工客服，"
                    "人工同事会在这里回复您。",
              "en": "I'm an automated assistant, not a person. I can answer most common questions right away; if you'd like a "
                    "human colleague, send /human and one will reply to you here."},
}

_PIECES = [(intent, re.compile(PATTERNS[intent])) for intent in INTENTS] + [(None, re.compile(FILLER)), (None, re.compile(ADDRESS))]


@dataclass(frozen=True)
class SmallTalk:
    intent: str  # one of INTENTS
    lang: str  # zh | en
    text: str  # the reply


def reply_to(text: str) -> SmallTalk | None:
    """The canned reply when the message is nothing but small talk; None when it carries anything else."""
    intent = classify(text)
    if intent is None:
        return None
    lang = "zh" if CJK.search(text) else "en"
    return SmallTalk(intent, lang, REPLIES[intent][lang])


def classify(text: str) -> str | None:
    """The message's small-talk intent, the most specific one when it has several ("好的，谢谢" is thanks)."""
    found = _tile(normalize(text))
    return next((intent for intent in INTENTS if found and intent in found), None)


def normalize(text: str) -> str:
    """NFKC, lower case, letters and digits only: "Thank you so much!! 🙏" → "thankyousomuch"."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def _tile(text: str) -> set[str] | None:
    """The intents of phrases that cover `text` end to end; None when some part is not small talk."""
    if not text or len(text) > MAX_CHARS:
        return None
    reached: list[set[str] | None] = [set()] + [None] * len(text)  # reached[i]: the intents of the tilings of text[:i]
    for start in range(len(text)):
        if reached[start] is None:
            continue
        for end in range(start + 1, len(text) + 1):
            for intent, pattern in _PIECES:
                if pattern.fullmatch(text, start, end):
                    reached[end] = (reached[end] or set()) | reached[start] | ({intent} if intent else set())
    return reached[-1]
