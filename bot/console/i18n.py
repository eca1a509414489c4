"""The console's words in Chinese and English; the language is the signed-in person's (their Telegram setting), or
the browser's before sign-in.

    t = translator("en")
    t("inbox")            # "Inbox"; an unknown key shows as itself
"""
from __future__ import annotations

from collections.abc import Callable

STRINGS: dict[str, tuple[str, str]] = {  # key: (zh, en)
    "console": ("Kefu 控制台", "Kefu console"),
    "inbox": ("待审", "Inbox"),
    "faq": ("常见问题", "FAQ"),
    "models": ("模型", "Models"),
    "handoffs": ("人工", "Handoffs"),
    "stats": ("统计", "Stats"),
    "audit": ("审计", "Audit"),
    "logout": ("退出", "Log out"),
    "login": ("登录", "Log in"),
    "login_how": ("在 Telegram 私聊机器人发送 /console 获取一次性登录链接（5 分钟内有效，只能用一次）；"
                  "本机 make run 会在终端打印一个。",
                  "Send /console to the bot in a private chat for a one-time login link (valid for 5 minutes, once); "
                  "`make run` prints one on this machine."),
    "login_confirm": ("点击按钮登录控制台。", "Press the button to log in to the console."),
    "login_refused": ("链接无效：已用过或已过期。请重新获取。", "This link does not work: it was used or it expired. Ask for a new one."),
    "too_many": ("尝试次数过多，请一分钟后再试。", "Too many attempts: try again in a minute."),
    "miniapp_wait": ("正在通过 Telegram 登录……", "Logging in through Telegram…"),
    "forbidden": ("无权限。", "Not allowed."),
    "show_todo": ("待审", "To review"),
    "show_reviewed": ("已审", "Reviewed"),
    "show_all": ("全部", "All"),
    "source": ("来源", "Source"),
    "rating": ("评价", "Rating"),
    "any": ("任意", "any"),
    "last_days": ("最近 {n} 天", "last {n} days"),
    "search": ("搜索", "Search"),
    "filter": ("筛选", "Filter"),
    "question": ("问题", "Question"),
    "answer": ("回答", "Answer"),
    "score": ("分数", "Score"),
    "version": ("版本", "Version"),
    "when": ("时间", "When"),
    "nothing": ("没有内容。", "Nothing here."),
    "newest_of": ("最近 {n} 条对话中", "among the newest {n} exchanges"),
    "conversation": ("上下文", "Conversation"),
    "candidates": ("FAQ 候选", "FAQ candidates"),
    "correct": ("修正回答", "Correct the answer"),
    "correct_help": ("保存为人工回答的训练样本（与转人工的回答相同）。",
                     "Stored as an operator's answer for training, as handoff answers are."),
    "save": ("保存", "Save"),
    "add_faq_new": ("加入 FAQ（新条目）", "Add to the FAQ as a new entry"),
    "add_faq_similar": ("作为相似问题加入条目", "Add as a similar question of entry"),
    "mark_reviewed": ("标记为已审", "Mark reviewed"),
    "reviewed_by": ("已审：", "Reviewed by"),
    "done": ("已完成。", "Done."),
    "entries": ("{n} 条", "{n} entries"),
    "import": ("导入", "Import"),
    "export": ("导出", "Export"),
    "imported": ("已导入 {n} 条。", "Imported {n} entries."),
    "try_question": ("试一个问题", "Try a question"),
    "add": ("添加", "Add"),
    "edit": ("编辑", "Edit"),
    "delete": ("删除", "Delete"),
    "similar": ("相似问题（每行一个）", "Similar questions (one a line)"),
    "current": ("当前", "current"),
    "promote": ("上线", "Promote"),
    "rollback": ("回滚", "Roll back"),
    "discard": ("丢弃", "Discard"),
    "retrain": ("重新训练", "Retrain"),
    "minutes": ("分钟", "minutes"),
    "job": ("训练任务", "Training job"),
    "open_handoffs": ("进行中的人工会话", "Open handoffs"),
    "waiting": ("等待", "Waiting"),
    "queue": ("排队", "Queue"),
    "held": ("非工作时间，等待中", "held until business hours"),
    "claimed": ("接手人", "Claimed by"),
    "claimed_by": ("{name} 已接手", "{name} has it"),
    "unclaimed": ("无人接手", "no one has it yet"),
    "no_handoff": ("这个会话没有进行中的人工服务（已结束或不存在）。",
                   "No open handoff for this chat (it closed, or there never was one)."),
    "answer_customer": ("回复客户", "Answer the customer"),
    "answer_help": ("通过机器人发给客户，与在客服群里回复相同：你将接手这个会话，回答记入训练数据，客服群也会看到。",
                    "Sent to the customer by the bot, as a reply in the operators' group is: you take the chat, the answer "
                    "goes to the training log, and the group sees it."),
    "send": ("发送", "Send"),
    "claim": ("接手", "Claim"),
    "close_handoff": ("结束（请客户评分）", "Done (the customer rates it)"),
    "proposed": ("常见问题缺少的人工回答", "Operators' answers the FAQ lacks"),
    "proposed_help": ("打开一条，把它加入 FAQ（管理员），或标记为已审。", "Open one to add it to the FAQ (admins) or mark it reviewed."),
    "who": ("谁", "Who"),
    "what": ("做了什么", "What"),
    "error": ("出错了：", "Something went wrong: "),
    "side_by_side": ("两个版本对比", "Two versions side by side"),
    "compare": ("对比", "Compare"),
    "compare_help": ("两个版本回答同样的对话轮次（{n} 个），来自 {v} 训练时留出的对话，去掉另一个版本记录为训练过的；"
                     "贪心解码，与机器人的提问方式相同。",
                     "Both answer the same turns ({n}), from the conversations {v} held out of its training, less those the "
                     "other version's record says it trained on, greedily, as the bot asks."),
    "compare_trained_on_them": ("{v} 训练过所有这些对话：它的分数不能说明它对新问题的表现。",
                                "{v} trained on every one of these conversations: its scores say little about new questions."),
    "compare_left_out": ("两个版本都在当前版本没有训练过的 {n} 段留出对话上比较（它训练过 {m} 段）。",
                         "Both compared on the {n} held-out conversations the current version did not train on (it trained on {m})."),
    "better_on": ("更好的轮次", "Better on"),
    "reference": ("真实回答", "Real answer"),
    "empty": ("问题和回答都不能为空。", "a question and an answer are both needed."),
    "changed": ("打开表单后这条内容被修改过（例如批准了新的说法），请在下面的最新内容上再改一次。",
                "the entry changed since this form was opened (a wording approved, say): here it is as it is now; edit again."),
    "decided": ("这条提议已经处理过了。", "that proposal was already decided."),
    "pending": ("待批准的说法", "Proposed wordings"),
    "pending_help": ("客户点选“您是不是想问”时用的说法，以及人工回答了 FAQ 缺少的问题。批准后立即可被搜索到。",
                     "Customers' wordings that led to an entry (a tapped \"did you mean\"), and operators' answers to questions "
                     "the FAQ lacks. Approved ones are searched at once."),
    "new_entry": ("新条目", "New entry"),
    "customers": ("{n} 位客户", "{n} customer(s)"),
    "approve": ("批准", "Approve"),
    "reject": ("拒绝", "Reject"),
    "entry_gone": ("（条目已删除）", "(entry deleted)"),
}


def translator(lang: str) -> Callable[..., str]:
    column = 1 if lang == "en" else 0

    def t(key: str, **values: object) -> str:
        text = STRINGS[key][column] if key in STRINGS else key
        return text.format(**values) if values else text

    return t


def browser_language(accept_language: str) -> str:
    """'en' unless the browser prefers Chinese."""
    first = accept_language.split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") or not first else "en"
