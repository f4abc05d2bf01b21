"""Whole-system soak and fault run: the bot, the worker and the Slack stand-in as separate processes.

For `--duration` seconds (default 180) it keeps sending signed Slack requests to the bot over HTTP
(channel messages, forwarded emails with and without their body, /label with message links, other
slash commands) and meanwhile:
- sends forged, replayed (timestamp 10 min old), malformed, oversized (1.5 MB) and non-UTF-8 requests,
  unknown labels and commands, links into a channel the bot may not touch, messages in that channel,
  label changes by an outsider (`/label` from another channel, a click on a reply's button), emails
  whose subject and body carry `<!channel>`, a user mention and a disguised link, and emails with
  U+2028/U+2029 in their text;
- runs a long import (`supportbot import`, 30,000 unlabeled rows) while the traffic goes on;
- redelivers events as Slack retries them (X-Slack-Retry-Num), and retries undelivered ones
  (Slack's schedule, compressed: after 1 s, 20 s and 60 s);
- has the stand-in answer 429 or 5xx to a share of the bot's Web API calls (`--fault-rate`);
- sends two /retrain at the same moment, SIGKILLs the worker while the run trains and restarts it;
- restarts the bot twice: SIGTERM (a deploy) and SIGKILL (a crash).
Then it lets the system settle and checks the database and what reached the stand-in against
what was sent, and prints the table. Loopback only; bounded in time and count.
Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import CACHE, DATA, machine, read_csv  # noqa: E402
from bench.hostile import HOSTILE, huge_body  # noqa: E402
from bot.slack.listeners.commands import CHECKING  # noqa: E402
from slack_standin import payloads  # noqa: E402

SECRET = "soak-signing-secret"
TOKEN = "xoxb-soak"
INTAKE, OTHER, REPORTS = "C0INTAKE", "C0OTHER", "C0REPORTS"
ADMIN, AGENT, OUTSIDER = "U0ADMIN", "U0AGENT", "U0OUTSIDER"
INJECTED = ("<!channel>", "<!here>", "<@U0ADMIN>", "<https://evil.example")  # must never reach Slack live
IMPORT_ROWS = 30_000
HUGE_CHARS = 41_000_000  # one forwarded email of this size, fetched with files.info
RETRY_AFTER_S = (1, 20, 60)  # Slack retries after ~0 s, 1 min and 5 min; compressed to keep runs short
FAULTY_METHODS = [
    "chat.postMessage",
    "chat.update",
    "chat.postEphemeral",
    "files.info",
    "conversations.history",
    "conversations.replies",
    "files.getUploadURLExternal",
    "files.completeUploadExternal",
]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 15):
    """(status or None when the connection failed, body, seconds)."""
    started = time.perf_counter()
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace"), time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace"), time.perf_counter() - started
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, "", time.perf_counter() - started


class System:
    """The three processes, started and stopped the way production does."""

    def __init__(self, work: Path, zero_shot_model: str | None):
        self.work, self.bot_port = work, free_port()
        self.standin = subprocess.Popen(
            [sys.executable, "-m", "slack_standin", "--bot-token", TOKEN], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        self.standin_url = f"http://127.0.0.1:{self.standin.stdout.readline().split()[1]}/"
        # Who is in which channel (conversations.members): the outsider is only in the channel outside intake.
        http(
            self.standin_url + "_standin/channels",
            json.dumps(
                {
                    INTAKE: {"members": [ADMIN, AGENT]},
                    OTHER: {"members": [AGENT, OUTSIDER]},
                    REPORTS: {"members": [ADMIN, AGENT]},
                }
            ).encode(),
        )
        self.env = {
            **os.environ,
            "SUPPORTBOT_DATA_DIR": str(work / "data"),
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": self.standin_url + "api/",
            "SUPPORTBOT_ADMINS": ADMIN,
            "SUPPORTBOT_INTAKE_CHANNELS": INTAKE,
            "SUPPORTBOT_REPORT_CHANNEL": REPORTS,
            "SUPPORTBOT_LOG_LEVEL": "INFO",
            # a killed worker's run is recovered once its lease expires: short here, to fit the soak
            "SUPPORTBOT_RUN_LEASE_S": "10",
            # The soak tests the system, not the model: all-MiniLM-L6-v2 trains in seconds, so the run
            # registers its adapter in time for the corrupted-adapter restart (mpnet's run comes after it).
            "SUPPORTBOT_BASE_MODEL": "minilm",
        }
        if zero_shot_model:  # the benchmarks' converted SmolLM2: no conversion inside the soak
            self.env["SUPPORTBOT_ZERO_SHOT_MODEL"] = zero_shot_model  # /retrain trains the default base model
        self.bot = self.worker = self.second_worker = None
        self.bot_url = f"http://127.0.0.1:{self.bot_port}/slack/events"

    def cli(self, *args) -> None:
        subprocess.run(
            [sys.executable, "-m", "bot.cli", *args], env=self.env, cwd=REPO, check=True, stdout=subprocess.DEVNULL
        )

    def long_import(self, rows: int, texts: list[str]) -> dict:
        """A large import through the CLI, as an admin would run it during the day. Its rows carry no label, so the
        training runs of the soak keep their size (the write lock is what is being tested)."""
        path = self.work / "long_import.csv"
        rng = random.Random(rows)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(rows):
                writer.writerow([f"{rng.choice(texts)} (import {i})", ""])
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", "import", str(path), "--json"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return {
            "rows": rows,
            "seconds": round(time.time() - started, 1),
            "exit_code": done.returncode,
            "stored": json.loads(done.stdout)["stored"] if done.returncode == 0 else done.stderr[-200:],
        }

    def _spawn(self, name: str, *args):
        log = open(self.work / f"{name}.log", "a")
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )

    def start_bot(self, timeout: float = 120) -> float:
        started = time.time()
        self.bot = self._spawn("bot", "serve", "--http", "--host", "127.0.0.1", "--port", str(self.bot_port))
        while time.time() - started < timeout:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.bot_port)) == 0:
                    return time.time() - started
            if self.bot.poll() is not None:
                raise SystemExit(f"the bot exited with {self.bot.returncode}; see {self.work / 'bot.log'}")
            time.sleep(0.1)
        raise SystemExit("the bot did not start listening")

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", "worker")

    def start_second_worker(self) -> None:
        """A second worker on the same database, as a rolling deploy starts one while the first trains."""
        self.second_worker = self._spawn("worker2", "worker")

    def stop(self) -> None:
        for process in (self.worker, self.second_worker, self.bot, self.standin):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()

    def faults(self, rate: float, seed: int) -> None:
        http(
            self.standin_url + "_standin/faults",
            json.dumps({"rate": rate, "methods": FAULTY_METHODS, "seed": seed}).encode(),
        )

    def state(self) -> dict:
        return json.loads(http(self.standin_url + "_standin/state")[1])

    def db(self):
        return sqlite3.connect(f"file:{self.work / 'data' / 'supportbot.db'}?mode=ro", uri=True, timeout=30)


class Traffic:
    """What a Slack workspace sends, good and bad, with a ledger of every request and its answer."""

    def __init__(self, system: System, seed: int, texts: list[str], label_names: list[str]):
        self.system, self.rng, self.texts, self.labels = system, random.Random(seed), texts, label_names
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # kind, status, seconds, at, expected ("accept" / "reject")
        self.messages: dict[str, dict] = {}  # ts -> what was sent (kind), for messages the bot must keep
        self.events: list[tuple[str, str, str]] = []  # (ts, body, content type) acknowledged, for redelivery
        self.labels_ok: list[tuple[str, str]] = []  # (ts, label) the bot said it stored
        self.hostile_ts: set[str] = set()  # ts carried by requests that must store nothing
        self.pending_retries: list[tuple[float, int, str, str, str]] = []
        self._ts = int(time.time()) * 1000
        self.restarting = threading.Event()

    def ts(self) -> str:
        with self.lock:
            self._ts += 1
            return f"{self._ts // 1000}.{self._ts % 1000:03d}100"

    def record(self, kind: str, expected: str, status, seconds: float, **extra) -> None:
        with self.lock:
            self.requests.append(
                {
                    "kind": kind,
                    "expected": expected,
                    "status": status,
                    "seconds": seconds,
                    "at": time.time(),
                    "during_restart": self.restarting.is_set(),
                    **extra,
                }
            )

    # -- sending --------------------------------------------------------------------------------------------
    def deliver_event(self, kind: str, body: str, content_type: str, ts: str, retry: int = 0) -> None:
        headers = payloads.signed_headers(SECRET, body, content_type, retry_num=retry or None)
        status, _, seconds = http(self.system.bot_url, body.encode(), headers)
        self.record(kind if not retry else "retry", "accept", status, seconds, retry=retry)
        if status is not None and 200 <= status < 300:
            with self.lock:
                self.events.append((ts, body, content_type))
        elif retry < len(RETRY_AFTER_S):  # as Slack does: try again later, with the retry number
            with self.lock:
                self.pending_retries.append((time.time() + RETRY_AFTER_S[retry], retry + 1, kind, body, content_type))

    def retries_due(self) -> None:
        now = time.time()
        with self.lock:
            due = [r for r in self.pending_retries if r[0] <= now]
            self.pending_retries = [r for r in self.pending_retries if r[0] > now]
        for _, retry, kind, body, content_type in due:
            self.deliver_event(kind, body, content_type, json.loads(body)["event"]["ts"], retry)

    def command(
        self, kind: str, expected: str, command: str, text: str, user: str = AGENT, channel: str = INTAKE, **sign
    ) -> tuple:
        key = f"soak-{self.ts()}"
        body, content_type = payloads.slash_command(
            command, text, user=user, channel=channel, response_url=self.system.standin_url + "respond/" + key
        )
        status, answer, seconds = http(
            self.system.bot_url, body.encode(), payloads.signed_headers(SECRET, body, content_type, **sign)
        )
        self.record(kind, expected, status, seconds)
        if status == 200 and CHECKING in answer:  # acknowledged at once, answered through the response URL
            answer = self.later_answer(key)
        return status, answer

    def later_answer(self, key: str, timeout: float = 30) -> str:
        """The answer the bot posted to the response URL `key` (empty when none came within `timeout`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = json.loads(http(self.system.standin_url + f"_standin/responded?key={key}")[1] or "{}")
            if got.get("responses"):
                return json.dumps(got["responses"][-1])
            time.sleep(0.2)
        self.record("answer_never_came", "accept", -1, timeout)  # acknowledged, but no answer followed
        return ""

    # -- the mix --------------------------------------------------------------------------------------------
    def message(self) -> None:
        ts = self.ts()
        body, content_type = payloads.event_callback(
            payloads.message_event(INTAKE, AGENT, self.rng.choice(self.texts), ts)
        )
        self.messages[ts] = {"kind": "message"}
        self.deliver_event("message", body, content_type, ts)

    def email(self, with_body: bool, kind: str = "") -> None:
        ts, text = self.ts(), self.rng.choice(self.texts)
        subject = text[:40]
        if kind == "injected_mention":  # a hostile sender: a mention, a user ping and a disguised link
            subject = "<!channel> URGENT <@U0ADMIN> " + subject
            text = f"{text}\n<https://evil.example|re-enter your password> <!here>"
        elif kind == "u2028":  # characters that some readers take for line ends
            text = text.replace(" ", "\u2028", 1) + "\u2029 end\u0085"
        elif kind == "hostile_email":  # bodies that once cost the bot minutes of cleaning (bench/hostile.py)
            text = f"{text}\n{self.rng.choice(list(HOSTILE.values()))}"
        elif kind == "huge_email":  # what files.info once returned: 41 MB
            text = huge_body(HUGE_CHARS)
            with_body = False
        file = payloads.email_file(
            f"F{ts.replace('.', '')}",
            subject=subject,
            sender="customer@example.com",
            sender_name="A Customer",
            body=f"Hello,\n\n{text}\n\nThanks\n--\nA Customer",
        )
        if not with_body:  # the event leaves the body out; files.info has it
            http(self.system.standin_url + "_standin/files", json.dumps(file).encode())
            file = {k: v for k, v in file.items() if k != "plain_text"}
        body, content_type = payloads.event_callback(payloads.email_event(INTAKE, ts, file))
        kind = kind or ("email" if with_body else "email_files_info")
        self.messages[ts] = {"kind": kind}
        self.deliver_event(kind, body, content_type, ts)

    def redeliver(self) -> None:
        with self.lock:
            if not self.events:
                return
            ts, body, content_type = self.rng.choice(self.events)
        headers = payloads.signed_headers(SECRET, body, content_type, retry_num=self.rng.randint(1, 3))
        status, _, seconds = http(self.system.bot_url, body.encode(), headers)
        self.record("redelivery", "accept", status, seconds)

    def label(self) -> None:
        with self.lock:
            old = [ts for ts, _, _ in self.events if float(ts) < time.time() - 3]
        if not old:
            return
        ts, name = self.rng.choice(old), self.rng.choice(self.labels)
        status, answer = self.command("label", "accept", "/label", f"{name} {link(INTAKE, ts)}")
        if status == 200 and "Labeled" in answer:
            with self.lock:
                self.labels_ok.append((ts, name))
        if any(live in answer for live in INJECTED):  # the answer quotes the message: never as live mrkdwn
            self.record("injected_mention_echoed", "reject", status, 0.0)

    def outsider_click(self) -> None:
        """Someone outside the intake channel clicks *Correct* under one of the bot's replies."""
        replies = [
            m
            for m in self.system.state()["messages"]
            if m.get("channel") == INTAKE
            and (m.get("metadata") or {}).get("event_type") == "supportbot_reply"
            and m.get("blocks")
        ]
        if not replies:
            return
        reply = self.rng.choice(replies)
        button = {**reply["blocks"][-1]["elements"][0], "block_id": "label_actions"}
        body, content_type = payloads.block_action(
            button,
            user=OUTSIDER,
            channel=INTAKE,
            message={k: reply[k] for k in ("type", "ts", "text", "blocks")},
            response_url=self.system.standin_url + "respond/soak",
        )
        status, _, seconds = http(
            self.system.bot_url, body.encode(), payloads.signed_headers(SECRET, body, content_type)
        )
        self.record("outsider_click", "reject", status, seconds)

    def other_command(self) -> None:
        command = self.rng.choice(["/stats", "/labels", "/model", "/retrain status"])
        name, _, text = command.partition(" ")
        self.command("command", "accept", name, text)

    def hostile(self) -> None:
        kind = self.rng.choice(
            [
                "forged",
                "replayed",
                "malformed",
                "oversized",
                "non_utf8",
                "unknown_label",
                "unknown_command",
                "foreign_link",
                "foreign_channel",
                "outsider_label",
                "outsider_click",
                "injected_mention",
                "u2028",
                "hostile_email",
                "hostile_email",
            ]
        )
        if kind in ("injected_mention", "u2028", "hostile_email"):  # hostile content, but real mail: kept, answered
            return self.email(True, kind)
        if kind == "outsider_click":
            return self.outsider_click()
        ts = self.ts()
        self.hostile_ts.add(ts)
        event, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, f"hostile {kind}", ts))
        if kind == "forged":
            status, _, seconds = http(
                self.system.bot_url, event.encode(), payloads.signed_headers("not-the-secret", event, content_type)
            )
        elif kind == "replayed":
            status, _, seconds = http(
                self.system.bot_url,
                event.encode(),
                payloads.signed_headers(SECRET, event, content_type, timestamp=int(time.time()) - 600),
            )
        elif kind == "malformed":
            raw = '{"type": "event_callback", "event": {"ts": "' + ts + '"'
            status, _, seconds = http(
                self.system.bot_url, raw.encode(), payloads.signed_headers(SECRET, raw, "application/json")
            )
        elif kind == "oversized":
            big, content_type = payloads.event_callback(payloads.message_event(INTAKE, AGENT, "x" * 1_500_000, ts))
            status, _, seconds = http(
                self.system.bot_url, big.encode(), payloads.signed_headers(SECRET, big, content_type)
            )
        elif kind == "non_utf8":
            raw = event.encode().replace(b"hostile", b"hostile \xff\xfe\xc3")
            status, _, seconds = http(
                self.system.bot_url, raw, payloads.signed_headers(SECRET, raw.decode("latin-1"), content_type)
            )
        elif kind == "foreign_channel":
            event, content_type = payloads.event_callback(payloads.message_event(OTHER, AGENT, "not for the bot", ts))
            status, _, seconds = http(
                self.system.bot_url, event.encode(), payloads.signed_headers(SECRET, event, content_type)
            )
        elif kind == "outsider_label":  # a real intake message, labeled from another channel by a non-member
            with self.lock:
                old = [ts for ts, _, _ in self.events]
            if not old:
                return
            status, answer = self.command(
                kind, "reject", "/label", f"{self.labels[0]} {link(INTAKE, old[-1])}", user=OUTSIDER, channel=OTHER
            )
            if status == 200 and "Labeled" in answer:
                self.record(kind + "_accepted", "reject", status, 0.0)
            return
        else:
            command, text = {
                "unknown_label": ("/label", f"no_such_label {link(INTAKE, ts)}"),
                "unknown_command": ("/frobnicate", "now"),
                "foreign_link": ("/label", f"{self.labels[0]} {link(OTHER, ts)}"),
            }[kind]
            status, answer = self.command(kind, "reject", command, text)
            if kind != "unknown_command" and status == 200 and "Labeled" in answer:
                self.record(kind + "_accepted", "reject", status, 0.0)
            return
        self.record(kind, "reject", status, seconds)

    def step(self) -> None:
        choice = self.rng.choices(
            ["message", "email", "email_files_info", "redeliver", "label", "command", "hostile"],
            weights=[30, 10, 5, 10, 15, 8, 22],
        )[0]
        {
            "message": self.message,
            "email": lambda: self.email(True),
            "email_files_info": lambda: self.email(False),
            "redeliver": self.redeliver,
            "label": self.label,
            "command": self.other_command,
            "hostile": self.hostile,
        }[choice]()


def link(channel: str, ts: str) -> str:
    return f"https://standin.slack.com/archives/{channel}/p{ts.replace('.', '')}"


def chaos(system: System, traffic: Traffic, duration: float, started: float, log: dict) -> None:
    """Two /retrain at once, SIGKILL of the worker mid-run, a long import, a SIGTERM and a SIGKILL restart of
    the bot."""

    def at(fraction: float) -> None:
        time.sleep(max(0.0, started + duration * fraction - time.time()))

    def long_import():
        at(0.25)
        log["long_import"] = system.long_import(IMPORT_ROWS, traffic.texts)

    threading.Thread(target=long_import, daemon=True).start()

    at(0.1)
    barrier, answers = threading.Barrier(2), []

    def retrain():
        barrier.wait()
        answers.append(traffic.command("retrain", "accept", "/retrain", "epochs=1", user=ADMIN)[1])

    both = [threading.Thread(target=retrain) for _ in range(2)]
    [t.start() for t in both]
    [t.join() for t in both]
    log["retrain_answers"] = [json.loads(a).get("text", a)[:120] if a.startswith("{") else a[:120] for a in answers]
    # Once the run has made a training step: a second worker starts (a rolling deploy) and must leave the
    # live run alone; then the first worker is killed (a real crash mid-run).
    deadline = time.time() + duration
    while time.time() < deadline:
        with system.db() as db:
            row = db.execute("SELECT id, run_dir, worker_id FROM runs WHERE status = 'running'").fetchone()
        if row and row[1] and (Path(row[1]) / "metrics.jsonl").exists():
            system.start_second_worker()
            time.sleep(5)
            with system.db() as db:
                after = db.execute("SELECT status, worker_id FROM runs WHERE id = ?", [row[0]]).fetchone()
            log["second_worker_started_during_run"] = row[0]
            log["live_runs_taken_over_by_the_second_worker"] = int(after != ("running", row[2]))
            system.worker.kill()
            system.worker.wait()
            log["worker_killed_during_run"] = row[0]
            time.sleep(2)
            system.start_worker()
            break
        time.sleep(0.5)
    at(0.3)
    traffic.email(False, "huge_email")
    log["huge_email_chars"] = HUGE_CHARS
    at(0.44)
    log["bot_peak_rss_mb_before_first_restart"] = peak_rss_mb(system.bot.pid)  # the huge email included
    for fraction, how in ((0.45, signal.SIGTERM), (0.75, signal.SIGKILL)):
        if how == signal.SIGKILL:  # the bot restarts onto an adapter whose weights were cut short meanwhile
            at(0.7)
            log["corrupt_adapter"] = corrupt_an_adapter(system)
        at(fraction)
        traffic.restarting.set()
        stopped = time.time()
        system.bot.send_signal(how)
        system.bot.wait(120)
        system.start_bot()
        traffic.restarting.clear()
        log.setdefault("bot_restarts", []).append(
            {"signal": how.name, "seconds_down": round(time.time() - stopped, 1), "at": round(stopped, 1)}
        )


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def corrupt_an_adapter(system: System) -> dict:
    """An admin serves the newest registered adapter (the gate may have kept the embeddings), then its weights
    file is cut to half, as a full disk or a bad copy leaves it. The bot must not serve it after its restart."""
    from storage import adapters, open_db, served

    db = open_db(system.work / "data" / "supportbot.db")
    newest = next(iter(adapters.list_adapters(db)), None)
    if newest is None:
        return {"skipped": "no adapter was registered yet"}
    adapters.promote(db, newest.version)
    served.set_served(db, "adapter", adapter_version=newest.version, reason="soak: an admin's choice", chosen_by=ADMIN)
    weights = Path(newest.path) / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    db.conn.close()
    return {"version": newest.version, "at": time.time()}


def settle(system: System, traffic: Traffic, timeout: float) -> float:
    """Wait until retries are spent, every kept message is answered, runs are done and the outbox is empty."""
    started = time.time()
    while time.time() - started < timeout:
        traffic.retries_due()
        with system.db() as db:
            busy = db.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running')").fetchone()[0]
            outbox = db.execute("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0]
            unanswered = db.execute("""SELECT COUNT(*) FROM messages m WHERE m.channel IS NOT NULL AND NOT EXISTS
                                       (SELECT 1 FROM replies r WHERE r.message_id = m.id AND r.ts != '')""").fetchone()[
                0
            ]
        if not traffic.pending_retries and not busy and not outbox and not unanswered:
            return time.time() - started
        time.sleep(2)
    return time.time() - started


def check(system: System, traffic: Traffic, log: dict) -> dict:
    state = system.state()
    db = system.db()
    stored = {
        ts: n for ts, n in db.execute("SELECT ts, COUNT(*) FROM messages WHERE channel = ? GROUP BY ts", [INTAKE])
    }
    replies = Counter(
        m.get("thread_ts")
        for m in state["messages"]
        if (m.get("metadata") or {}).get("event_type") == "supportbot_reply"
    )
    kept = set(traffic.messages)
    acked = {ts for ts, _, _ in traffic.events}
    labels = Counter(
        db.execute("""SELECT m.ts, l.label FROM labels l JOIN messages m ON m.id = l.message_id
                                   WHERE l.method = 'slash_command'""").fetchall()
    )
    wanted = Counter(traffic.labels_ok)
    keys = Counter(
        ((m.get("metadata") or {}).get("event_payload") or {}).get("key")
        for m in state["messages"]
        if m.get("channel") == REPORTS
    )
    finished = [r for r in db.execute("SELECT id, status, params FROM runs WHERE status NOT IN ('queued', 'running')")]
    interrupted = [r[0] for r in finished if r[1] == "interrupted"]
    recovered = [
        i for i in interrupted if any(json.loads(r[2]).get("retry_of") == i and r[1] == "succeeded" for r in finished)
    ]
    # Which model answered (embeddings, adapter vN, adapter vN + embeddings, zero-shot), in the order they served.
    served = db.execute("""SELECT COALESCE(model, 'v' || adapter_version, 'zero-shot') AS m, COUNT(*), MIN(created_at),
                           MAX(created_at) FROM predictions GROUP BY m ORDER BY MIN(created_at)""").fetchall()
    requests = traffic.requests
    accepted = [r for r in requests if r["status"] is not None and 200 <= r["status"] < 300]
    answered = ("unknown_label", "foreign_link", "foreign_channel", "outsider_label", "outsider_click")
    rejected = Counter(
        f"{r['kind']} ({r['status']})"
        for r in requests
        if r["expected"] == "reject" and not (r["status"] == 200 and r["kind"] in answered)
    )
    refused_answers = Counter(
        r["kind"] for r in requests if r["expected"] == "reject" and r["status"] == 200 and r["kind"] in answered
    )
    outsider_labels = db.execute("SELECT COUNT(*) FROM labels WHERE labeled_by = ?", [OUTSIDER]).fetchone()[0]
    posted = [
        json.dumps(m.get("blocks") or []) + (m.get("text") or "")
        for m in state["messages"]
        if m.get("user") == "U0BOT" or m.get("bot_id")
    ]
    live = sum(1 for text in posted if any(x in text for x in INJECTED))
    hostile_kinds = Counter(v["kind"] for v in traffic.messages.values())
    special_stored = {
        kind: sum(1 for ts, v in traffic.messages.items() if v["kind"] == kind and ts in stored)
        for kind in ("injected_mention", "u2028", "hostile_email", "huge_email")
    }
    forged = [
        r
        for r in requests
        if r["kind"] in ("forged", "replayed") and r["status"] is not None and 200 <= r["status"] < 300
    ]
    acks = [r["seconds"] * 1000 for r in accepted if r["expected"] == "accept"]
    twice = db.execute(
        "SELECT COUNT(*) FROM (SELECT run_id FROM adapters GROUP BY run_id HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    corrupt = log.get("corrupt_adapter") or {}
    corrupt_answers = unusable_reports = None
    if "version" in corrupt:
        restart = next((r["at"] for r in log.get("bot_restarts", []) if r["signal"] == "SIGKILL"), corrupt["at"])
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(restart))
        corrupt_answers = db.execute(
            "SELECT COUNT(*) FROM predictions WHERE adapter_version = ? AND created_at > ?", [corrupt["version"], stamp]
        ).fetchone()[0]
        unusable_reports = keys.get(f"adapter:{corrupt['version']}:unusable", 0)
    return {
        "requests_sent": len(requests),
        "requests_accepted": len(accepted),
        "requests_rejected_by_reason": dict(sorted(rejected.items())),
        "hostile_answered_with_a_refusal": dict(refused_answers),
        "requests_failed_while_bot_restarting": sum(1 for r in requests if r["status"] is None),
        "redeliveries_sent": sum(1 for r in requests if r["kind"] in ("redelivery", "retry")),
        "forged_or_replayed_accepted": len(forged),
        "hostile_requests_stored": sum(1 for ts in traffic.hostile_ts if ts in stored),
        "hostile_labels_accepted": sum(1 for r in requests if r["kind"].endswith("_accepted")),
        "outsider_label_attempts": sum(1 for r in requests if r["kind"] in ("outsider_label", "outsider_click")),
        "outsider_labels_stored": outsider_labels,
        "injected_emails_sent": hostile_kinds.get("injected_mention", 0),
        "injected_emails_stored": special_stored["injected_mention"],
        "injected_mentions_live_in_slack": live + sum(1 for r in requests if r["kind"] == "injected_mention_echoed"),
        "u2028_emails_sent": hostile_kinds.get("u2028", 0),
        "u2028_emails_stored": special_stored["u2028"],
        "hostile_emails_sent": hostile_kinds.get("hostile_email", 0),
        "hostile_emails_stored": special_stored["hostile_email"],
        "hostile_emails_answered": sum(
            1 for ts, v in traffic.messages.items() if v["kind"] in ("hostile_email", "huge_email") and replies.get(ts)
        ),
        "huge_email_stored": special_stored["huge_email"],
        "command_answers_missing_after_checking": sum(1 for r in requests if r["kind"] == "answer_never_came"),
        "adapters_registered_twice_for_one_run": twice,
        "answers_from_the_corrupt_adapter_after_restart": corrupt_answers,
        "corrupt_adapter_reports_in_channel": unusable_reports,
        "messages_sent": len(kept),
        "messages_acknowledged": len(kept & acked),
        "messages_stored": len(kept & set(stored)),
        "messages_lost": len((kept & acked) - set(stored)),
        "messages_never_acknowledged": len(kept - acked),
        "duplicates_stored": sum(n - 1 for n in stored.values() if n > 1),
        "messages_answered": sum(1 for ts in kept if replies.get(ts)),
        "messages_unanswered": sum(1 for ts in kept & set(stored) if not replies.get(ts)),
        "answers_duplicated": sum(n - 1 for n in replies.values() if n > 1),
        "labels_accepted": len(traffic.labels_ok),
        # a label the bot confirmed and that is not stored (one user giving a message the same label twice is
        # one label: the repeat is not a new row)
        "labels_lost": sum(1 for key in wanted if labels.get(key, 0) == 0),
        "runs_finished": len(finished),
        "reports_lost": sum(1 for r in finished if keys.get(f"run:{r[0]}:report", 0) == 0),
        "reports_duplicated": sum(n - 1 for k, n in keys.items() if k and n > 1),
        "runs_interrupted": len(interrupted),
        "runs_interrupted_and_recovered": len(recovered),
        "run_statuses": dict(Counter(r[1] for r in finished)),
        "adapter_served": [{"adapter": a, "predictions": n, "from": lo, "to": hi} for a, n, lo, hi in served],
        "web_api_faults_injected": sum(state["faults"].values()),
        "web_api_faults_by_method": state["faults"],
        "ack_p50_ms": percentile(acks, 0.5),
        "ack_p99_ms": percentile(acks, 0.99),
        "ack_max_ms": max(acks) if acks else None,
        **log,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second (average)")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of Web API calls answered 429/5xx")
    parser.add_argument("--settle", type=float, default=600, help="seconds to wait for the system to settle")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    converted = CACHE / "models" / "smollm2-135m-instruct"
    system = System(work, str(converted) if (converted / "config.json").exists() else None)
    texts = [r["text"] for r in read_csv(DATA / "test.csv")]
    with (REPO / "bot" / "demo" / "labels.csv").open(newline="", encoding="utf-8") as f:
        names = [row["name"] for row in csv.DictReader(f)]
    log: dict = {}
    try:
        system.cli("init")
        from bot.local import seed_demo
        from storage import open_db

        seed_demo(open_db(work / "data" / "supportbot.db"))
        log["bot_start_seconds"] = round(system.start_bot(), 1)
        system.start_worker()
        system.faults(args.fault_rate, args.seed)
        traffic = Traffic(system, args.seed, texts, names)
        started = time.time()
        threading.Thread(target=chaos, args=(system, traffic, args.duration, started, log), daemon=True).start()
        print(
            f"soak: {args.duration:.0f} s of traffic at ~{args.rate}/s, fault rate {args.fault_rate}; logs in "
            f"{work.name}",
            flush=True,
        )
        senders = threading.BoundedSemaphore(16)

        def one():
            try:
                traffic.step()
            finally:
                senders.release()

        while time.time() - started < args.duration:
            traffic.retries_due()
            senders.acquire()
            threading.Thread(target=one, daemon=True).start()
            time.sleep(traffic.rng.expovariate(args.rate))
        for _ in range(16):
            senders.acquire()
        log["settle_seconds"] = round(settle(system, traffic, args.settle), 1)
        result = {
            "benchmark": "soak",
            "machine": machine(),
            "duration_s": args.duration,
            "rate_per_s": args.rate,
            "fault_rate": args.fault_rate,
            "seed": args.seed,
            **check(system, traffic, log),
        }
    finally:
        system.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        if key != "machine":
            print(f"{key:42} {value}")


if __name__ == "__main__":
    main()
