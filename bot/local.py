"""`supportbot local`: the whole product on this machine, without a Slack app.

Starts the local Slack workspace (a page and a Web API stand-in), the bot in HTTP
mode with its relay and schedule, and the worker as its own process; seeds a
small labeled demo set when the database is empty; prints the URL. Ctrl-C
stops all of them.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

from storage import importing, labels, messages, open_db

from .settings import Settings, as_environment

log = logging.getLogger(__name__)

DEMO = Path(__file__).with_name("demo")
INTAKE, REPORTS = "C0SUPPORT", "C0TRAINING"
YOU = "U0YOU"


def seed_demo(db, *, redact: bool = False) -> int:
    """Labels with descriptions and 36 labeled demo emails, if the database has no messages yet (cleaned and,
    with `redact`, redacted as every other door's text is)."""
    if messages.count_messages(db, include_deleted=True):
        return 0
    with (DEMO / "labels.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            labels.add_label_def(db, row["name"], row["description"])
    path = DEMO / "emails.csv"
    from textprep.cleaning import text_cleaner

    return importing.import_examples(
        db, path, importing.read_examples(path, text_col="text", label_col="label"), clean=text_cleaner(redact)
    ).stored


def local_settings(settings: Settings, secret: str, api_url: str) -> Settings:
    return replace(
        settings,
        slack_bot_token="xoxb-local-workspace",
        slack_app_token="",
        slack_signing_secret=secret,
        slack_api_url=api_url,
        admins=(YOU,),
        intake_channels=(INTAKE,),
        report_channel=REPORTS,
    )


def environment_for(settings: Settings) -> dict:
    """The worker process's environment: the same settings as the bot, every one of them."""
    return {**os.environ, **as_environment(settings)}


class LocalStack:
    """The workspace, the bot and the worker, started and stopped together."""

    def __init__(self, settings: Settings, *, port: int = 8080, host: str = "127.0.0.1"):
        from slack_standin.workspace import Workspace

        secret = secrets.token_hex(16)
        self.workspace = Workspace(
            signing_secret=secret,
            channels={INTAKE: "support-inbox", REPORTS: "training"},
            user=YOU,
            bot_token="xoxb-local-workspace",
        ).start(port)
        self.settings = local_settings(settings, secret, self.workspace.api_url)
        self.host = host
        self.server = self.scheduler = self.ctx = self.worker = None

    def start(self) -> "LocalStack":
        from .slack.context import BotContext
        from .slack.relay import relay_client
        from .slack.scheduler import start_scheduler
        from .slack.server import make_http_server

        db = open_db(self.settings.db_path)
        seeded = seed_demo(db, redact=self.settings.redact)
        if seeded:
            log.info("seeded %d labeled demo emails", seeded)
        self.ctx = BotContext(self.settings)
        print(
            "Loading the model that answers (a packaged language model, when one is needed, is converted "
            "once on first use: about a minute)...",
            flush=True,
        )
        self.ctx.classifier()  # so the first email is answered in seconds, not after a load
        self.server = make_http_server(self.ctx, self.host, 0)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="bot-http").start()
        self.workspace.bot_url = f"http://{self.host}:{self.server.server_port}/slack/events"
        self.scheduler = start_scheduler(self.ctx, relay_client(self.settings))
        self.worker = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=environment_for(self.settings))
        return self

    @property
    def url(self) -> str:
        return self.workspace.url

    def stop(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
        if self.server:
            self.server.shutdown()
        if self.ctx:
            self.ctx.close()
        self.workspace.stop()


def run_local(settings: Settings, port: int) -> None:
    stack = LocalStack(settings, port=port).start()
    print(
        f"\nsupportbot is running locally: open {stack.url}\n"
        "Forward an email or post a message in #support-inbox, correct the label, then type /retrain.\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping the worker, the bot and the workspace...", flush=True)
        stack.stop()
