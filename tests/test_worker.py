"""The training worker and the outbox relay: /retrain end to end, crashes, cancel, Slack errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bot.slack.relay import Relay, relay_client
from bot.settings import load_settings
from bot.runs.worker import Worker
from bot.slack import reports
from storage import adapters, labels, messages, open_db, outbox, runs

from .conftest import toy_examples
from .test_bot import ADMIN, INTAKE, SECRET, Bot, as_json  # noqa: F401 - shared helpers

REPORTS = "C0REPORTS"
FAST = {"learning_rate": 0.01, "grad_accum": 1, "epochs": 3, "baseline": False}


@pytest.fixture
def system(env, tiny_model_dir, monkeypatch):
    """Bot (in-process app), worker (in-process), relay, and the stand-in they talk to."""
    from slack_sdk import WebClient

    from bot.slack.app import create_app
    from bot.slack.context import BotContext
    from slack_standin.server import SlackStandIn

    standin = SlackStandIn().start()
    environment = {"SUPPORTBOT_DATA_DIR": str(env / "data"), "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
                   "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
                   "SLACK_BOT_TOKEN": standin.bot_token, "SLACK_SIGNING_SECRET": SECRET,
                   "SLACK_API_URL": standin.api_url, "SUPPORTBOT_ADMINS": ADMIN,
                   "SUPPORTBOT_INTAKE_CHANNELS": INTAKE, "SUPPORTBOT_REPORT_CHANNEL": REPORTS}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(environment, env_file=None)
    ctx = BotContext(settings)
    db = ctx.db()
    for e in toy_examples():
        m, _ = messages.add_message(db, source="import", external_id=f"toy:{len(e['text'])}:{e['text']}",
                                    raw_body=e["text"])
        labels.add_label_def(db, e["label"])
        labels.add_label(db, m.id, e["label"], by=ADMIN, method="cli")
    app = create_app(ctx, WebClient(token=standin.bot_token, base_url=standin.api_url))
    bot = Bot(app, ctx, standin)
    relay = Relay(ctx.db, relay_client(settings), files_dir=settings.runs_dir)
    yield bot, Worker(settings, reports, poll_s=0.1, progress_every_s=0.0), relay, settings
    ctx.close()
    standin.stop()


class relay_running:
    """The relay delivering in a background thread, every 50 ms, for the duration of a `with` block."""

    def __init__(self, relay):
        import threading

        self.relay, self.stop = relay, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            self.relay.deliver_due()
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def deliver_all(relay, db, timeout=20):
    deadline = time.time() + timeout
    while outbox.pending_count(db) and time.time() < deadline:
        relay.deliver_due()
        time.sleep(0.05)


def queue(bot, params):
    run = runs.queue_run(bot.db, requested_by=ADMIN, params=params)
    return run


def test_retrain_end_to_end_reports_in_the_channel_and_serves_the_new_adapter(system):
    bot, worker, relay, settings = system
    answer = bot.command("/retrain", "epochs=3", user=ADMIN)
    assert answer["text"].startswith("Queued training run 1 on 60 labeled messages")
    runs_params = runs.get_run(bot.db, 1).params
    assert runs_params == {"epochs": 3}
    # The seed learning rate is too slow for the tiny model: give this run the toy settings.
    bot.db.execute("UPDATE runs SET params = ? WHERE id = 1", [json.dumps(FAST)])
    bot.db.conn.commit()
    with relay_running(relay):  # as the bot's scheduler does, while the worker trains
        assert worker.run_once()
    run = runs.get_run(bot.db, 1)
    assert run.status == "succeeded" and run.adapter_version == 1
    assert len(runs.run_metrics(bot.db, 1)) >= 3
    deliver_all(relay, bot.db)

    posts = bot.standin.calls_to("chat.postMessage")
    report = [c for c in posts if "finished" in c.params["text"]]
    assert len(report) == 1 and report[0].params["channel"] == REPORTS
    text = json.dumps(report[0].params["blocks"])
    assert "Loss per epoch" in text and "epoch  train loss  eval loss" in text and "now serving: *adapter v1*" in text
    progress = [c for c in posts if c.params["text"].startswith("Training run 1:")]
    assert len(progress) == 1  # one progress message...
    progress_ts = next(ts for (ch, ts), m in bot.standin.messages.items() if m["text"].startswith("Training run 1:"))
    updates = bot.standin.calls_to("chat.update")
    assert updates and {u.params["ts"] for u in updates} == {progress_ts}  # ...updated in place
    final = bot.standin.messages[(REPORTS, progress_ts)]
    assert final["text"] == "Training run 1: 100%" and "done" in json.dumps(final["blocks"])
    completed = bot.standin.calls_to("files.completeUploadExternal")
    assert len(completed) == 1 and json.loads(completed[0].params["files"])[0]["title"] == "Training run 1"
    uploaded = bot.standin.uploads[json.loads(completed[0].params["files"])[0]["id"]]
    assert uploaded.startswith(b"\x89PNG")

    # The bot serves the new adapter from the next message on.
    ts = bot.post("broken refund angry terrible late")
    bot.settle()
    reply = [c for c in bot.standin.calls_to("chat.postMessage") if c.params.get("thread_ts") == ts][0]
    assert "adapter v1" in json.dumps(as_json(reply.params["blocks"]))


def test_a_second_retrain_while_one_runs_is_refused(system, tmp_path):
    bot, *_ = system
    bot.command("/retrain", user=ADMIN)
    runs.claim_next_run(bot.db, run_dir_for=lambda i: tmp_path / f"run-{i}")
    answer = bot.command("/retrain", user=ADMIN)["text"]
    assert answer.startswith("A training run is already active") and "Run 1: *running*" in answer
    assert len(runs.list_runs(bot.db)) == 1


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def running_trainer(settings, run_id):
    pid_file = settings.runs_dir / f"run-{run_id}" / "trainer.pid"
    metrics = settings.runs_dir / f"run-{run_id}" / "metrics.jsonl"
    wait_until(lambda: pid_file.exists() and metrics.exists() and '"train"' in metrics.read_text(),
               what="the trainer to start training")
    return int(pid_file.read_text())


def test_sigkill_of_the_trainer_child_fails_the_run_and_keeps_the_serving_adapter(system):
    import threading

    bot, worker, relay, settings = system
    serving = adapters.register_adapter(bot.db, path="/prev", base_model="m", labels=["a"], metrics={})
    adapters.promote(bot.db, serving.version)
    queue(bot, {**FAST, "epochs": 200})
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    os.killpg(running_trainer(settings, 1), signal.SIGKILL)
    thread.join(60)
    run = runs.get_run(bot.db, 1)
    assert run.status == "failed" and "killed (signal 9)" in run.error and "smaller batch" in run.error
    assert adapters.current_adapter(bot.db).version == serving.version
    assert len(adapters.list_adapters(bot.db)) == 1  # nothing registered
    deliver_all(relay, bot.db)
    assert any("Training run 1 failed" in c.params["text"] for c in bot.standin.calls_to("chat.postMessage"))


def start_worker_process(env):
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], cwd=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_sigkill_of_the_worker_interrupts_the_run_and_the_next_one_proceeds(system, env):
    bot, worker, relay, settings = system
    queue(bot, {**FAST, "epochs": 200})
    process = start_worker_process(env)
    trainer_pid = running_trainer(settings, 1)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait(10)
    wait_until(lambda: not os.path.exists(f"/proc/{trainer_pid}") or
               open(f"/proc/{trainer_pid}/stat").read().split()[2] == "Z", 10, "the trainer to die with the worker")
    assert runs.get_run(bot.db, 1).status == "running"  # nobody marked it yet
    from storage import RunConflict

    with pytest.raises(RunConflict):  # a second run cannot be queued while the first looks active
        runs.queue_run(bot.db, requested_by=ADMIN, params=FAST)

    assert worker.recover() == [1]
    run, again = runs.get_run(bot.db, 1), runs.get_run(bot.db, 2)
    assert run.status == "interrupted" and adapters.list_adapters(bot.db) == []
    # The retrain someone asked for is not lost: it is queued again, marked as a retry.
    assert again.status == "queued" and again.params == {**run.params, "retry_of": 1}
    said = lambda key: outbox.get(bot.db, key).payload["blocks"][0]["text"]["text"]  # noqa: E731
    assert "Queued again as run 2" in said("run:1:report")
    # A retry that dies too is left for a person (no crash loop).
    runs.claim_run(bot.db, 2, run_dir=str(settings.data_dir / "runs" / "2"))
    assert worker.recover() == [2]
    assert runs.active_run(bot.db) is None
    assert "not queued again" in said("run:2:report")
    # A retry trains like any run (its bookkeeping is not passed to the trainer as config).
    runs.queue_run(bot.db, requested_by=ADMIN, params={**FAST, "retry_of": 2})
    assert worker.run_once()
    assert runs.get_run(bot.db, 3).status == "succeeded", runs.get_run(bot.db, 3).error
    assert adapters.current_adapter(bot.db).run_id == 3


def test_sigterm_stops_the_child_and_requeues_the_run(system, env):
    bot, worker, relay, settings = system
    queue(bot, {**FAST, "epochs": 200})
    process = start_worker_process(env)
    running_trainer(settings, 1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    first, again = runs.get_run(bot.db, 1), runs.get_run(bot.db, 2)
    assert first.status == "interrupted" and again.status == "queued"
    assert again.params == {**first.params, "retry_of": 1}
    assert adapters.list_adapters(bot.db) == []


def test_cancel_stops_the_run_at_its_next_step(system):
    import threading

    bot, worker, relay, settings = system
    queue(bot, {**FAST, "epochs": 200})
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    running_trainer(settings, 1)
    assert bot.command("/retrain", "cancel", user=ADMIN)["text"] == "Run 1 will stop at its next training step."
    thread.join(60)
    run = runs.get_run(bot.db, 1)
    assert run.status == "cancelled" and adapters.list_adapters(bot.db) == []
    deliver_all(relay, bot.db)
    assert any("Training run 1 cancelled" in c.params["text"] for c in bot.standin.calls_to("chat.postMessage"))


def test_429_and_500_before_success_deliver_exactly_one_report(system):
    bot, worker, relay, settings = system
    outbox.put(bot.db, "run:9:report", REPORTS, {"text": "Training run 9 finished"})
    bot.standin.fail("chat.postMessage", 429, times=1, retry_after=0)
    bot.standin.fail("chat.postMessage", 500, times=1)
    started = time.time()
    deliver_all(relay, bot.db)  # 429 -> Retry-After (0 s); 500 -> backoff (a few s); then success
    assert time.time() - started >= 2
    attempts = bot.standin.calls_to("chat.postMessage")
    assert len(attempts) == 3
    delivered = [m for m in bot.standin.messages.values() if m["text"] == "Training run 9 finished"]
    assert len(delivered) == 1 and outbox.get(bot.db, "run:9:report").status == "sent"


def test_relay_restart_neither_loses_nor_duplicates(system):
    bot, worker, relay, settings = system
    for key in ("run:1:report", "run:2:report"):
        outbox.put(bot.db, key, REPORTS, {"text": key})
    # A relay that delivered run 1's report and died before recording it; run 2's never went out.
    relay.client.chat_postMessage(channel=REPORTS, text="run:1:report",
                                  metadata={"event_type": "supportbot_outbox", "event_payload": {"key": "run:1:report"}})
    outbox.claim_due(bot.db)
    assert {i.key for i in outbox.in_doubt(bot.db)} == {"run:1:report", "run:2:report"}
    fresh = Relay(bot.ctx.db, relay_client(settings))
    assert fresh.recover() == 1
    deliver_all(fresh, bot.db)
    texts = [m["text"] for m in bot.standin.messages.values()]
    assert texts.count("run:1:report") == 1 and texts.count("run:2:report") == 1


def test_permanent_errors_are_recorded_not_retried_forever(system):
    bot, worker, relay, settings = system
    outbox.put(bot.db, "digest:x", "", {"text": "nowhere"})
    deliver_all(relay, bot.db)
    item = outbox.get(bot.db, "digest:x")
    assert item.status == "failed" and item.error == "channel_not_found"


def test_a_stopped_run_is_queued_again_like_a_crashed_one(env, monkeypatch):
    """Both re-queue paths mark the retry and survive a run queued meanwhile (RunConflict is reported)."""
    from bot.runs.execute import RunOutcome

    monkeypatch.setenv("SUPPORTBOT_REPORT_CHANNEL", REPORTS)
    worker = Worker(load_settings(), reports)
    db = worker.db

    def stopped_run():
        run = runs.queue_run(db, requested_by=ADMIN, params=FAST)
        runs.claim_run(db, run.id, str(env / f"run-{run.id}"))
        return runs.finish_run(db, run.id, "interrupted", error="the worker was stopped during this run")

    first = stopped_run()
    worker._finish(RunOutcome(first, {}, None, False))
    assert runs.active_run(db).params == {**FAST, "retry_of": first.id}
    runs.finish_run(db, runs.active_run(db).id, "cancelled")
    second = stopped_run()
    other = runs.queue_run(db, requested_by=ADMIN, params=FAST)  # someone asked for a run meanwhile
    worker._finish(RunOutcome(second, {}, None, False))
    assert runs.active_run(db).id == other.id
    report = outbox.get(db, f"run:{second.id}:report").payload["blocks"][0]["text"]["text"]
    assert f"Not queued again: run {other.id} is already queued" in report


def test_starting_a_trainer_leaves_its_log_closed_in_the_worker(tmp_path):
    """The handle is closed, not left to the garbage collector (which warns of it) or kept open per run."""
    import gc
    import warnings

    from bot.runs.local import start_trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        child = start_trainer(tmp_path)  # no config.json: the trainer says so in its log and exits
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and "trainer.log" in str(w.message)]
    assert child.wait(120) != 0
    assert "config.json" in (tmp_path / "trainer.log").read_text()

    def open_paths():
        for fd in os.listdir("/proc/self/fd"):
            try:
                yield os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass

    assert str(tmp_path / "trainer.log") not in set(open_paths())
