"""What the bot says, in Chinese and English; the language follows the message, then the user's Telegram setting.

    t = texts(language("how do I return this?", "zh-hans"))   # English: the question is in English
    t.fallback
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telegram import Update

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class Texts:
    greeting: str
    help: str
    fallback: str
    did_you_mean: str
    text_only: str
    too_long: str
    slow_down: str
    unavailable: str
    reset_done: str
    forget_confirm: str
    forget_yes: str
    forget_no: str
    forget_done: str
    forget_cancelled: str
    thanks_feedback: str
    stale_button: str
    human_button: str
    human_requested: str
    human_unavailable: str
    unknown_command: str
    error: str
    handoff_waiting: str
    handoff_closed: str
    handoff_idle: str
    operator_says: str
    queue_position: str
    offer_colleague: str
    offer_yes: str
    offer_no: str
    offer_declined: str
    rate_handoff: str
    rated_handoff: str
    comment_prompt: str
    comment_skip: str
    comment_thanks: str
    after_hours: str
    note_kept: str
    opens_at: str  # str.format with at (a datetime in the hours' zone) and zone
    handoff_delivered: str


ZH = Texts(
    greeting="您好，{name}！我是客服助手 Kefu，请直接输入您的问题，例如“怎么退货？”",
    help="直接发送问题即可，我会先查常见问题，再由模型作答；不确定时可以转人工。\n"
         "/reset 清除对话上下文\n/forget 删除我保存的关于您的全部数据\n/help 显示本帮助",
    fallback="抱歉，这个问题我还不能确定地回答。您可以换个说法再问，或者点击下方按钮联系人工客服。",
    did_you_mean="您是不是想问：",
    text_only="抱歉，我目前只能阅读文字消息，请用文字描述您的问题。",
    too_long="消息太长了（最多 {limit} 个字），请精简后再发。",
    slow_down="您发送得太快了，请稍等一分钟再继续。",
    unavailable="服务暂时不可用，请稍后再试。",
    reset_done="好的，已清除对话上下文。",
    forget_confirm="确定要删除我保存的关于您的全部数据（对话记录、评价等）吗？此操作无法撤销。",
    forget_yes="确定删除",
    forget_no="取消",
    forget_done="已删除我保存的关于您的全部数据。",
    forget_cancelled="已取消，什么都没有删除。",
    thanks_feedback="感谢您的反馈！",
    stale_button="这个按钮已失效。",
    human_button="人工客服",
    human_requested="已为您转接人工客服，请稍候，客服人员会在这里回复您。发送 /end 结束人工服务。",
    human_unavailable="抱歉，目前没有在线的人工客服，请稍后再试。",
    unknown_command="没有这个命令。发送 /help 查看可用命令。",
    error="抱歉，出了点问题，请稍后再试。",
    handoff_waiting="已经在为您转接人工客服了，请稍候；您的消息会转给客服人员。发送 /end 结束人工服务。",
    handoff_closed="人工客服会话已结束，接下来由我继续为您服务。",
    handoff_idle="人工客服会话因长时间无消息已结束；如还需要人工帮助，请再次点击“人工客服”。",
    operator_says="👩‍💼 人工客服：{text}",
    queue_position="您目前排在第 {n} 位，人工同事会尽快回复您。",
    offer_colleague="看来我没能帮上忙。要我请一位人工同事来为您解答吗？",
    offer_yes="好的，请转人工",
    offer_no="不用了",
    offer_declined="好的，您可以继续问我；需要时发送 /human 即可转接人工客服。",
    rate_handoff="请为刚才的人工服务打分：1 = 很不满意，5 = 非常满意。",
    rated_handoff="感谢您的评价！",
    comment_prompt="如果愿意，可以直接发一条消息告诉我们原因（5 分钟内）；不想写请点“跳过”。",
    comment_skip="跳过",
    comment_thanks="谢谢您的留言，我们会认真看。",
    after_hours="现在是人工客服的非工作时间，客服人员将于 {when} 上线并在这里回复您。您可以现在留言，留言会一并转给他们。发送 /end 取消。",
    note_kept="已记下您的留言，客服人员 {when} 上线后会看到。",
    opens_at="{at:%m}月{at:%d}日 {at:%H:%M}（{zone}）",
    handoff_delivered="人工客服已上线，您的问题和留言已转给他们，请稍候。",
)

EN = Texts(
    greeting="Hello, {name}! I'm Kefu, the customer-service assistant. Just type your question, e.g. \"How do I return an item?\"",
    help="Send your question as a message: I check the FAQ first, then the model answers; when I'm not sure you can "
         "reach a human.\n/reset forget the conversation context\n/forget erase everything I keep about you\n/help this help",
    fallback="Sorry, I can't answer that with confidence yet. Try rephrasing, or tap the button below to reach a human.",
    did_you_mean="Did you mean:",
    text_only="Sorry, I can only read text messages for now. Please describe your question in words.",
    too_long="That message is too long (at most {limit} characters). Please shorten it.",
    slow_down="You're sending messages too fast. Please wait a minute.",
    unavailable="The service is temporarily unavailable. Please try again shortly.",
    reset_done="Done: the conversation context is cleared.",
    forget_confirm="Erase everything I keep about you (conversation history, logged messages, ratings)? This cannot be undone.",
    forget_yes="Erase",
    forget_no="Cancel",
    forget_done="Everything I kept about you has been erased.",
    forget_cancelled="Cancelled: nothing was erased.",
    thanks_feedback="Thanks for the feedback!",
    stale_button="This button has expired.",
    human_button="Talk to a human",
    human_requested="A human operator has been asked to join; they will answer you here. Send /end to finish.",
    human_unavailable="Sorry, no human operator is available right now. Please try again later.",
    unknown_command="Unknown command. Send /help to see what I can do.",
    error="Sorry, something went wrong. Please try again later.",
    handoff_waiting="A human operator is on the way; your messages go to them. Send /end to finish.",
    handoff_closed="The conversation with the operator has ended; I'm back to help you.",
    handoff_idle="The conversation with the operator closed after a long silence; tap \"Talk to a human\" again if you need one.",
    operator_says="👩‍💼 Operator: {text}",
    queue_position="You are number {n} in the queue; a colleague will answer shortly.",
    offer_colleague="It looks like I couldn't help. Shall I get a colleague to answer you?",
    offer_yes="Yes, get a colleague",
    offer_no="No, thanks",
    offer_declined="OK, keep asking me; send /human whenever you'd like a colleague.",
    rate_handoff="How satisfied were you with the operator's help? 1 = not at all, 5 = very.",
    rated_handoff="Thanks for rating!",
    comment_prompt="If you like, tell us why in one message (within 5 minutes), or tap Skip.",
    comment_skip="Skip",
    comment_thanks="Thanks, your comment reaches the team.",
    after_hours="Our colleagues are out of office now; someone will answer you here from {when}. You can leave a message "
                "now and they will get it. Send /end to cancel.",
    note_kept="Noted: a colleague will read it from {when}.",
    opens_at="{at:%a %d %b %H:%M} ({zone})",
    handoff_delivered="Our colleagues are in now: your question and messages are with them. Please wait a moment.",
)


def language(text: str | None, language_code: str | None) -> str:
    """'zh' or 'en': the text's script decides when it is clear, otherwise the Telegram setting; Chinese by default.
    A command says nothing about the user's language (/forget is English for everyone)."""
    if text and text.startswith("/"):
        text = None
    if text and CJK.search(text):
        return "zh"
    if text and LATIN_WORD.search(text):
        return "en"
    return "en" if language_code and not language_code.lower().startswith("zh") else "zh"


def texts(lang: str) -> Texts:
    return EN if lang == "en" else ZH


def texts_for(update: Update) -> Texts:
    """The texts for a Telegram update: its message's script decides, else the user's Telegram setting."""
    user, message = update.effective_user, update.effective_message
    return texts(language(message.text if message else None, user.language_code if user else None))
