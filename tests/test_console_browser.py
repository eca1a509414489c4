"""The console in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver (installed by
`make install`, .ci/install-chromium; nothing downloads a browser). At phone width (390 px): log in with a one-time
link, find a fallback in the inbox, correct it; and a hostile exchange shows as text with no dialog. Screenshots go to
$CONSOLE_SCREENSHOTS when it is set (`CONSOLE_SCREENSHOTS=docs/console` refreshes the ones docs/console.md shows),
otherwise to the test's temporary folder."""
import asyncio
import os
import shutil
from pathlib import Path

import pytest

from .conftest import FAQ_PAIRS, REPO, TINY_MODEL, serve_app, serve_models
from .consolekit import ADMIN, ADMIN_ID, OPERATOR, console_settings, init_data, log_exchange

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed "
                                "(`make install` installs them with .ci/install-chromium; it could not here)")
PHONE = (390, 844)
WAIT_S = 10
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'
TOKEN = "browser-admin-token"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={PHONE[0]},{PHONE[1]}",
                 "--lang=zh-CN"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    # a phone's viewport: headless chromium keeps windows at least 500 px wide
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2,
                                                                  "mobile": True})
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def served(redis_url, prefix, tiny_models, tmp_path):
    """The console on a loopback port over a real llmcore (a copy of the tiny registry): (base URL, Console)."""
    from bot.console.app import create_app
    from bot.console.base import CONSOLE
    from bot.search import FaqEntry
    from llmcore.chats import Conversation, write_conversations
    from llmcore.registry import HELDOUT

    root = tmp_path / "reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    shutil.copytree(root / "v0001", root / "v0002")  # a second version to list (and promote), at no training cost
    llm_runner, llm_url = await serve_models(root, TOKEN, max_batch=2)
    app = create_app(console_settings(redis_url, prefix, llmcore_url=llm_url, llmcore_admin_token=TOKEN))
    runner, url = await serve_app(app)
    console = app[CONSOLE]
    await console.kefu.faq.add_many([FaqEntry("", q, a) for q, a in FAQ_PAIRS])
    write_conversations(root / "v0002" / HELDOUT, [Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                                                   for q, a in FAQ_PAIRS[:6]])  # turns v0002 "held out", to compare versions on
    shipping = next(e for e in await console.kefu.faq.entries() if e.question == FAQ_PAIRS[1][0])
    await console.kefu.paraphrases.offered(700, 1, "寄过来要多少邮费", [shipping.id])  # a customer's tap: a proposed wording
    await console.kefu.paraphrases.tapped(700, 1, shipping.id, user_id=700)
    yield url, console
    await runner.cleanup()
    await llm_runner.cleanup()


def wait_for(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(ready.presence_of_element_located((By.CSS_SELECTOR, css)))


def fits_the_phone(driver) -> bool:
    """Nothing sticks out sideways (no horizontal scrolling)."""
    wide = driver.execute_script("return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
                                 f"{PHONE[0]} + 1).map(e => e.tagName + '.' + e.className).slice(0, 5)")
    assert not wide, wide
    return driver.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]


def log_in(driver, base: str, token: str, shots: Path) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/login/{token}")
    button = wait_for(driver, "#login-button")
    driver.save_screenshot(str(shots / "login.png"))
    button.click()
    wait_for(driver, "#inbox")


def find_and_correct(driver, question: str, answer: str, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.save_screenshot(str(shots / "inbox.png"))
    driver.find_element(By.PARTIAL_LINK_TEXT, question).click()
    assert wait_for(driver, "#question").text == question and fits_the_phone(driver)
    form = driver.find_element(By.ID, "correct-form")
    driver.save_screenshot(str(shots / "exchange.png"))
    form.find_element(By.NAME, "answer").send_keys(answer)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(driver, "#done")


def tour(driver, base: str, shots: Path) -> list[str]:
    """The other pages, a screenshot each; the ones wider than the phone."""
    too_wide = []
    for name, path, marker in (("faq", "/faq?try=运费怎么算", "#pending"), ("models", "/models", "#versions"),
                               ("compare", "/models/compare?a=v0001&b=v0002", "#side-by-side"),
                               ("handoffs", "/handoffs", "#handoffs"), ("stats", "/stats", "#stats"), ("audit", "/audit", "#audit")):
        driver.get(base + path)
        wait_for(driver, marker)
        driver.save_screenshot(str(shots / f"{name}.png"))
        if not fits_the_phone(driver):
            too_wide.append(name)
    return too_wide


async def test_log_in_find_a_fallback_and_correct_it(browser, served, shots):
    base, console = served
    await log_exchange(console, "怎么退货？", FAQ_PAIRS[0][1], "faq", 0.97)
    await log_exchange(console, "会员积分什么时候过期？", "积分每年12月31日清零。", "model", -0.2, chat_id=556, rating="down")
    await log_exchange(console, "Can I change the delivery address?", "Yes, before it ships.", "model", -0.8, chat_id=557)
    await log_exchange(console, "发票抬头开错了能改吗？", "抱歉，这个问题我还不能确定地回答。", "fallback", -2.3)
    token = await console.auth.issue_link(ADMIN)
    await asyncio.to_thread(log_in, browser, base, token, shots)
    assert "发票抬头开错了能改吗？" in browser.page_source and "怎么退货？" not in browser.page_source  # only what needs review
    await asyncio.to_thread(find_and_correct, browser, "发票抬头开错了能改吗？", "可以，开票后30天内在订单页修改抬头。", shots)
    logged = [e async for _, e in console.kefu.log.entries()]
    assert logged[-1]["source"] == "operator" and logged[-1]["answer"] == "可以，开票后30天内在订单页修改抬头。"
    assert logged[-1]["question"] == "发票抬头开错了能改吗？"
    assert await asyncio.to_thread(tour, browser, base, shots) == []  # every page fits 390 px
    # the FAQ page's proposals: the customer's tapped wording, and the correction (a question the FAQ lacks, as a new entry)
    assert [p.wording for p in await console.kefu.paraphrases.pending()] == ["发票抬头开错了能改吗？", "寄过来要多少邮费"]
    await asyncio.to_thread(approve_proposal, browser, base, "寄过来要多少邮费")
    shipping = next(e for e in await console.kefu.faq.entries() if e.question == FAQ_PAIRS[1][0])
    assert shipping.similar == ("寄过来要多少邮费",)
    assert [p.wording for p in await console.kefu.paraphrases.pending()] == ["发票抬头开错了能改吗？"]


async def test_a_hostile_question_is_text_and_opens_no_dialog(browser, served, shots):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    base, console = served
    entry_id = await log_exchange(console, HOSTILE, HOSTILE, "fallback", -3.0)
    token = await console.auth.issue_link(ADMIN)
    await asyncio.to_thread(log_in, browser, base, token, shots)

    def look() -> tuple[str, str]:
        shown = browser.find_element(By.CSS_SELECTOR, "#inbox .q").text
        browser.get(f"{base}/exchange/{entry_id}")
        return shown, wait_for(browser, "#question").text

    in_inbox, on_page = await asyncio.to_thread(look)
    assert in_inbox == on_page == HOSTILE  # the customer's text, as text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 (the property raises when no dialog is open)
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []


async def test_the_mini_app_logs_in_with_telegrams_init_data(browser, served):
    """As Telegram opens it: initData in the URL fragment; the page's script sends it, and the inbox opens."""
    from urllib.parse import quote

    from selenium.webdriver.common.by import By

    base, _ = served
    signed = init_data({"id": ADMIN_ID, "first_name": "Ann", "language_code": "zh-hans"})

    def open_app(data: str) -> None:
        browser.delete_all_cookies()
        browser.get(f"{base}/app#tgWebAppData={quote(data, safe='')}&tgWebAppVersion=8.0&tgWebAppPlatform=ios")

    await asyncio.to_thread(open_app, signed)
    assert await asyncio.to_thread(lambda: wait_for(browser, "#inbox") and browser.find_element(By.TAG_NAME, "h1").text) == "待审"
    await asyncio.to_thread(open_app, signed)  # the same data again: a replay
    error = await asyncio.to_thread(wait_for_visible, browser, "#miniapp-error")
    assert error.text in ("无权限。", "Not allowed.") and browser.get_cookie("kefu_console") is None


async def test_an_operator_answers_a_handoff_in_the_browser(browser, telegram, redis_url, prefix, shots):
    """The Handoffs page at phone width: open the chat, answer it; the customer gets it through the Bot API server."""
    from selenium.webdriver.common.by import By

    from bot.console.app import create_app
    from bot.console.base import CONSOLE

    settings = console_settings(redis_url, prefix, telegram_bot_token=telegram.token, telegram_api_base=telegram.base,
                                operator_chat_id=-100888)
    app = create_app(settings)
    runner, base = await serve_app(app)
    try:
        console = app[CONSOLE]
        await console.kefu.history.append(777, 777, "我的包裹三天没动了", "抱歉，这个问题我还不能确定地回答。")
        assert await console.kefu.handoffs.open(777, 777, "我的包裹三天没动了", who="李雷 (id 777)")
        token = await console.auth.issue_link(OPERATOR)
        await asyncio.to_thread(log_in, browser, base, token, shots)

        def answer() -> str:
            browser.get(f"{base}/handoffs")
            wait_for(browser, "#handoffs").find_element(By.PARTIAL_LINK_TEXT, "我的包裹三天没动了").click()
            form = wait_for(browser, "#answer-form")
            assert fits_the_phone(browser)
            browser.save_screenshot(str(shots / "handoff.png"))
            form.find_element(By.NAME, "answer").send_keys("包裹在中转站，明天送达。")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait_for(browser, "#done")
            return browser.find_element(By.ID, "claimer").text

        assert await asyncio.to_thread(answer) == "Olga"
        assert telegram.sent_texts(777) == ["👩‍💼 人工客服：包裹在中转站，明天送达。"]
    finally:
        await runner.cleanup()


def approve_proposal(driver, base: str, wording: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/faq")
    row = wait_for(driver, "#pending").find_element(By.XPATH, f".//li[contains(., '{wording}')]")
    row.find_element(By.CSS_SELECTOR, "form[action$='/approve'] button").click()
    wait_for(driver, ".done")


def wait_for_visible(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(ready.visibility_of_element_located((By.CSS_SELECTOR, css)))


@pytest.mark.slow
async def test_the_loop_in_the_browser(browser, telegram, redis_url, prefix, tiny_models, tmp_path, seeded, shots):
    """Customers get fallbacks → an admin corrects each in the inbox → starts a retrain on the Models page and watches it
    → promotes the new version → the bot (through the local Bot API server) answers those questions from it."""
    from bot.console.app import create_app
    from bot.console.base import CONSOLE
    from llmcore.evaluate import char_f1
    from llmcore.registry import Registry

    from .botkit import running_bot, settings_for
    from .loopflow import NEW_QA, ask_all

    root = tmp_path / "loop-reg"
    shutil.copytree(tiny_models, root, symlinks=True)
    llm_runner, llm_url = await serve_models(root, TOKEN, max_batch=8)
    shape = {k: v for k, v in TINY_MODEL.items() if k != "dropout"}
    settings = settings_for(telegram, redis_url, llm_url, prefix, "polling", admin_ids=str(ADMIN.user_id), llmcore_admin_token=TOKEN,
                            retrain_shape=shape, min_confidence=-10.0, min_training_conversations=5, faq_encoder="none",
                            min_answer_probability=0.0, kb_check=False)  # the gates' part of the loop is test_loop's; on
                            # a busy machine a minute of training leaves them refusing every answer: this test is the console's
    app = create_app(settings)
    runner, base = await serve_app(app)
    try:
        async with running_bot(settings, telegram):
            before = await ask_all(telegram, NEW_QA, first_user=5000)
        token = await app[CONSOLE].auth.issue_link(ADMIN)
        await asyncio.to_thread(log_in, browser, base, token, tmp_path)  # the other tests' screenshots of these pages stay
        for question, answer in NEW_QA:  # fallbacks, or model answers of any confidence: all of them
            await asyncio.to_thread(browser.get, base + "/?show=all")
            await asyncio.to_thread(find_and_correct, browser, question, answer, tmp_path)
        await asyncio.to_thread(retrain_and_promote, browser, base, shots)
        assert Registry(root).current() == "v0002"
        compared = await asyncio.to_thread(side_by_side, browser, base, shots)  # the new version against the old one
        assert "v0001" in compared and "v0002" in compared
        await served_version(llm_url, "v0002")
        async with running_bot(settings, telegram):
            after = await ask_all(telegram, NEW_QA, first_user=6000)
    finally:
        await runner.cleanup()
        await llm_runner.cleanup()
    references = [a for _, a in NEW_QA]
    assert sum(map(char_f1, before, references)) / len(references) < 0.5, before
    # the new version answers them: the bar is lower than test_loop's 0.8 for the same training data, since a busy machine
    # trains fewer steps in the minute; what this test is about is the path through the console
    assert all(not a.startswith("抱歉，这个问题我还不能") for a in after), after  # model answers, not the fallback
    assert sum(map(char_f1, after, references)) / len(references) >= 0.6, after


def retrain_and_promote(driver, base: str, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/models")
    form = wait_for(driver, "#retrain-form")
    minutes = form.find_element(By.NAME, "minutes")
    minutes.clear()
    minutes.send_keys("1.5")  # a busy machine (0.5 of a core) still trains enough in it
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    bar = wait_for(driver, "#job-text[data-events]")  # running: the page listens to the job's events
    WebDriverWait(driver, 120).until(lambda d: "training" in bar.text)  # the events moved it on
    driver.save_screenshot(str(shots / "retrain.png"))
    WebDriverWait(driver, 300).until(lambda d: d.find_elements(By.ID, "compare"))  # ended: the page reloaded itself
    driver.save_screenshot(str(shots / "retrained.png"))
    decide = driver.find_elements(By.CSS_SELECTOR, "#job form[action$='/promote'] button")
    if decide:  # llmcore did not promote it by itself (not better on the held-out turns): the admin does
        decide[0].click()
        WebDriverWait(driver, WAIT_S).until(lambda d: "done=promote" in d.current_url)


def side_by_side(driver, base: str, shots: Path) -> str:
    """The Models page's comparison form, as an admin uses it: the two newest versions on the newer one's held-out turns."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/models")
    wait_for(driver, "#compare-form").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "side-by-side"))
    driver.save_screenshot(str(shots / "compare.png"))
    return driver.find_element(By.TAG_NAME, "h1").text


async def served_version(llm_url: str, version: str) -> None:
    """Until llmcore serves `version` (it hot-reloads between model steps)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(llm_url + "/healthz") as response:
                if (await response.json()).get("version") == version:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"llmcore did not start serving {version}")
