"""The local workspace in a real browser (headless Chromium): the whole loop a person goes through."""

import shutil
import time
from pathlib import Path

import pytest

from bot.settings import load_settings

from .conftest import REPO

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (`make test` installs them when run as root)",
)

ARTIFACTS = REPO / "test-artifacts"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def eventually(check, timeout=90, what="the page to show it"):
    """Retry `check` (the page re-renders as updates arrive, so elements are looked up afresh)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException, IndexError) as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"waited {timeout}s for {what} ({last!r})")


def channel(driver, name):
    from selenium.webdriver.common.by import By

    return next(
        c
        for c in driver.find_elements(By.CSS_SELECTOR, "section.channel")
        if c.find_element(By.TAG_NAME, "h2").text == f"#{name}"
    )


def forward_email(driver, subject, body):
    from selenium.webdriver.common.by import By

    form = channel(driver, "support-inbox").find_element(By.CSS_SELECTOR, "form.email-form")
    form.find_element(By.NAME, "subject").send_keys(subject)
    form.find_element(By.NAME, "body").send_keys(body)
    form.find_element(By.TAG_NAME, "button").click()


def bot_reply_under(driver, subject):
    """The bot's thread reply under the email with `subject`."""
    from selenium.webdriver.common.by import By

    for message in channel(driver, "support-inbox").find_elements(By.CSS_SELECTOR, ".timeline > .msg"):
        if subject in message.text:
            replies = message.find_elements(By.CSS_SELECTOR, ".thread .msg.bot")
            return replies[0] if replies else None
    return None


def type_command(driver, text):
    from selenium.webdriver.common.by import By

    box = channel(driver, "support-inbox").find_element(By.CSS_SELECTOR, "form:not(.email-form) input[name=text]")
    box.send_keys(text)
    channel(driver, "support-inbox").find_element(By.CSS_SELECTOR, "form:not(.email-form) button").click()


def test_the_whole_loop_in_a_browser(env, tiny_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from bot.local import LocalStack

    settings = load_settings(
        {
            "SUPPORTBOT_DATA_DIR": str(env / "data"),
            "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
            "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
        },
        env_file=None,
    )
    stack = LocalStack(settings, port=0).start()
    driver = browser()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.get(stack.url)
        eventually(lambda: channel(driver, "support-inbox"), 30, "the channels")

        # 1. A forwarded email is classified in its thread, by the embedding classifier fitted on the demo's
        #    labelled emails (nothing trained yet, and no zero-shot guess while there are labels).
        forward_email(driver, "Order never arrived", "I ordered three weeks ago and nobody answers. Unacceptable.")
        reply = eventually(lambda: bot_reply_under(driver, "Order never arrived"), what="the classification reply")
        assert "embeddings" in reply.text and "zero-shot" not in reply.text

        # 2. Correct it with the picker; the reply shows the human label.
        def pick():
            select = bot_reply_under(driver, "Order never arrived").find_element(
                By.CSS_SELECTOR, "select[data-action-id=label_pick]"
            )
            Select(select).select_by_visible_text("complaint")
            return True

        eventually(pick, 30, "the label picker")
        eventually(
            lambda: "Labeled complaint by @U0YOU" in bot_reply_under(driver, "Order never arrived").text,
            30,
            "the correction in the reply",
        )

        # 3. /retrain: progress updates in place, then the report and its picture.
        type_command(driver, "/retrain")
        eventually(lambda: "Queued training run 1" in channel(driver, "support-inbox").text, 30, "the retrain ack")
        training = lambda: channel(driver, "training")  # noqa: E731
        eventually(lambda: "Training run 1:" in training().text, 60, "the progress message")
        eventually(lambda: "Training run 1 finished" in training().text, 240, "the report")
        assert "100%" in training().text and len(training().find_elements(By.CSS_SELECTOR, ".msg")) >= 2
        assert "Loss per epoch" in training().text
        eventually(
            lambda: driver.execute_script(
                "const i = document.querySelector('img.file'); return i && i.complete && i.naturalWidth > 0;"
            ),
            60,
            "the report picture",
        )

        # 4. The report says which candidate the gate serves, and the next email is answered by it.
        from storage import served

        choice = served.current_served(stack.ctx.db())
        shown = {"embeddings": "embeddings", "adapter": "adapter v1", "ensemble": "adapter v1 + embeddings"}
        assert choice is not None and f"now serving: {shown[choice.kind]}" in training().text
        forward_email(driver, "Invoice download", "Where can I download the invoice for my last order?")
        reply = eventually(lambda: bot_reply_under(driver, "Invoice download"), what="the second reply")
        assert shown[choice.kind] in reply.text
    finally:
        driver.save_screenshot(str(ARTIFACTS / "local-workspace.png"))
        driver.quit()
        stack.stop()
    assert Path(ARTIFACTS / "local-workspace.png").stat().st_size > 10_000
