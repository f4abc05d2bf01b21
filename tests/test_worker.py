"""The training worker and the outbox relay: /retrain end to end, crashes, cancel, Slack errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.runs.worker import Worker
from bot.settings import load_settings
from bot.slack import reports
from bot.slack.relay import Relay, relay_client
from storage import adapters, labels, messages, outbox, runs

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
    environment = {
        "SUPPORTBOT_DATA_DIR": str(env / "data"),
        "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
        "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
        "SLACK_BOT_TOKEN": standin.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": standin.api_url,
        "SUPPORTBOT_ADMINS": ADMIN,
        "SUPPORTBOT_INTAKE_CHANNELS": INTAKE,
        "SUPPORTBOT_REPORT_CHANNEL": REPORTS,
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(environment, env_file=None)
    ctx = BotContext(settings)
    db = ctx.db()
    for e in toy_examples():
        m, _ = messages.add_message(
            db, source="import", external_id=f"toy:{len(e['text'])}:{e['text']}", raw_body=e["text"]
        )
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
    blocks = json.dumps(final["blocks"])  # the last update says it is over, all steps run or stopped early
    assert (final["text"] == "Training run 1: 100%" and "done" in blocks) or "done: stopped early at step" in blocks
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
    wait_until(
        lambda: pid_file.exists() and metrics.exists() and '"train"' in metrics.read_text(),
        what="the trainer to start training",
    )
    return json.loads(pid_file.read_text())["pid"]


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
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"], cwd=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_sigkill_of_the_worker_interrupts_the_run_and_the_next_one_proceeds(system, env, monkeypatch):
    bot, worker, relay, settings = system
    queue(bot, {**FAST, "epochs": 200})
    monkeypatch.setenv("SUPPORTBOT_RUN_LEASE_S", "2")  # the killed worker's lease expires 2 s after its last renewal
    process = start_worker_process(env)
    trainer_pid = running_trainer(settings, 1)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait(10)
    wait_until(
        lambda: (
            not os.path.exists(f"/proc/{trainer_pid}") or open(f"/proc/{trainer_pid}/stat").read().split()[2] == "Z"
        ),
        10,
        "the trainer to die with the worker",
    )
    assert runs.get_run(bot.db, 1).status == "running"  # nobody marked it yet
    from storage import RunConflict

    with pytest.raises(RunConflict):  # a second run cannot be queued while the first looks active
        runs.queue_run(bot.db, requested_by=ADMIN, params=FAST)

    wait_until(lambda: worker.recover() == [1], 10, "the dead worker's lease to expire and the run to be recovered")
    run, again = runs.get_run(bot.db, 1), runs.get_run(bot.db, 2)
    assert run.status == "interrupted" and adapters.list_adapters(bot.db) == []
    # The retrain someone asked for is not lost: it is queued again, marked as a retry.
    assert again.status == "queued" and again.params == {**run.params, "retry_of": 1}
    said = lambda key: outbox.get(bot.db, key).payload["blocks"][0]["text"]["text"]  # noqa: E731
    assert "Queued again as run 2" in said("run:1:report")
    # A retry that dies too is left for a person (no crash loop).
    runs.claim_run(bot.db, 2, run_dir=str(settings.data_dir / "runs" / "2"), lease_s=0.01)  # a claim, then death
    time.sleep(0.05)
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
    relay.client.chat_postMessage(
        channel=REPORTS,
        text="run:1:report",
        metadata={"event_type": "supportbot_outbox", "event_payload": {"key": "run:1:report"}},
    )
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


# -- leases: a second worker (a rolling deploy) and a worker that stalls past its lease -----------------------------


def two_workers(env, monkeypatch, **settings_changes):
    """Two workers on one database, as during a rolling deploy."""
    import dataclasses

    monkeypatch.setenv("SUPPORTBOT_REPORT_CHANNEL", REPORTS)
    settings = dataclasses.replace(load_settings(), **settings_changes)
    return Worker(settings, reports), Worker(settings, reports)


def claimed_by(worker):
    """A run queued and claimed by `worker`, as its run_once does, with its run directory made."""
    from bot.runs.execute import run_dir_for

    runs.queue_run(worker.db, requested_by=ADMIN, params=FAST)
    run = runs.claim_next_run(
        worker.db,
        run_dir_for=lambda i: run_dir_for(worker.settings, i),
        worker_id=worker.id,
        lease_s=worker.settings.run_lease_s,
    )
    os.makedirs(run.run_dir)
    return run


def a_trainer(worker, run, db_path=None):
    """A stand-in trainer (`sleep`) recorded in the run's pid file as the worker's backend records its trainer."""
    from bot.runs.local import owner_of, start_recorded

    return start_recorded(["sleep", "60"], Path(run.run_dir), owner_of(db_path or worker.settings.db_path, worker.id))


def test_a_second_worker_leaves_a_live_lease_alone_and_recovers_an_expired_one(env, monkeypatch):
    first, second = two_workers(env, monkeypatch)
    run = claimed_by(first)
    trainer = a_trainer(first, run)
    try:
        assert second.recover() == []  # the first worker holds a live lease: its run and trainer are left alone
        assert runs.get_run(second.db, run.id).status == "running" and trainer.poll() is None
        # The first worker dies: its last renewal was for a short lease, which expires.
        runs.renew_lease(first.db, run.id, first.id, lease_s=0.05)
        time.sleep(0.1)
        assert second.recover() == [run.id]
        assert trainer.wait(10) == -signal.SIGKILL  # proven to be the dead worker's trainer: killed
        settled = runs.get_run(second.db, run.id)
        assert settled.status == "interrupted" and "lease expired" in settled.error
        assert runs.active_run(second.db).params == {**FAST, "retry_of": run.id}  # queued again, once
        assert second.recover() == []  # settled once
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait()


def test_an_idle_worker_keeps_looking_for_expired_leases(env, monkeypatch):
    """A worker started while another's run was live recovers it later, when it expires, not only at its start."""
    _, worker = two_workers(env, monkeypatch)
    calls = []

    def recover():
        calls.append(time.time())
        if len(calls) == 3:
            worker.stop_requested.set()
        return []

    monkeypatch.setattr(worker, "recover", recover)
    monkeypatch.setattr(worker, "run_once", lambda: False)  # nothing to claim: another worker's run is running
    worker.poll_s = 0.01
    worker.run_forever()
    assert len(calls) == 3  # at start, then at every idle poll


class StalledRun:
    """A backend handle whose worker stalls past its lease (a frozen VM, say) while another worker recovers the run.

    `finishes`: the trainer then succeeds (its adapter must not be registered); else it keeps running until stopped.
    """

    def __init__(self, run_dir, other, run_id, finishes):
        self.run_dir, self.other, self.run_id, self.finishes = run_dir, other, run_id, finishes
        self.polls, self.stopped = 0, False

    def poll(self):
        from bot.runs.backend import Ending

        self.polls += 1
        if self.stopped:
            return Ending(-signal.SIGTERM)
        if self.polls > 1:
            return None
        time.sleep(self.other.settings.run_lease_s * 2)  # stalled: the lease expires, nobody renewed it
        assert self.other.recover() == [self.run_id]
        if not self.finishes:
            return None
        (self.run_dir / "adapter").mkdir()
        (self.run_dir / "adapter" / "adapter_config.json").write_text("{}")
        (self.run_dir / "result.json").write_text(
            json.dumps(
                {
                    "status": "succeeded",
                    "adapter_dir": str(self.run_dir / "adapter"),
                    "base_model": "m",
                    "labels": ["a", "b"],
                    "metrics": {"accuracy": 0.9, "macro_f1": 0.9, "n": 4},
                    "promotion": {"promote": True, "reason": "better"},
                    "data": {"train": 8},
                }
            )
        )
        return Ending(0)

    def cancel(self):
        pass

    def stop(self):
        self.stopped = True


@pytest.mark.parametrize("finishes", [True, False], ids=["trainer-succeeds-anyway", "trainer-still-running"])
def test_a_run_taken_over_by_another_worker_registers_nothing(env, monkeypatch, finishes):
    from bot.runs.execute import execute_run

    first, second = two_workers(env, monkeypatch, run_lease_s=0.3)
    serving = adapters.register_adapter(first.db, path="/prev", base_model="m", labels=["a"], metrics={})
    adapters.promote(first.db, serving.version)
    run = claimed_by(first)
    handles = []

    class Backend:
        def start(self, run_dir):
            handles.append(StalledRun(run_dir, second, run.id, finishes))
            return handles[0]

    outcome = execute_run(first.settings, first.db, run, backend=Backend())
    assert outcome.lease_lost and outcome.adapter is None and not outcome.promoted
    assert handles[0].stopped is not finishes  # a trainer still running when the loss was seen is stopped
    assert [a.version for a in adapters.list_adapters(first.db)] == [serving.version]  # nothing registered
    assert adapters.current_adapter(first.db).version == serving.version  # nor promoted
    assert not (first.settings.adapters_dir / f"run-{run.id}").exists()  # its copy removed
    settled = runs.get_run(first.db, run.id)
    assert settled.status == "interrupted" and settled.adapter_version is None  # as the recovering worker said
    report = outbox.get(first.db, f"run:{run.id}:report").payload
    first._finish(outcome)  # the first worker says nothing more: the other reported and queued it again
    assert outbox.get(first.db, f"run:{run.id}:report").payload == report
    assert [r.status for r in runs.list_runs(first.db)] == ["queued", "interrupted"]


def test_finishing_needs_the_lease(env, monkeypatch):
    first, second = two_workers(env, monkeypatch)
    run = claimed_by(first)
    from storage import LeaseLost

    with pytest.raises(LeaseLost, match="no longer"):
        runs.finish_run(first.db, run.id, "succeeded", worker_id=second.id)
    assert runs.interrupt_expired(second.db, run.id, error="x") is None  # its lease is live
    finished = runs.finish_run(first.db, run.id, "succeeded", worker_id=first.id)
    assert finished.status == "succeeded"
    with pytest.raises(LeaseLost):
        runs.renew_lease(first.db, run.id, first.id)  # a finished run has no lease to renew


# -- the pid file: nothing is killed unless it is proven to be this run's trainer ----------------------------------


def test_a_pid_file_naming_an_unrelated_process_kills_nothing(env, monkeypatch, caplog):
    from bot.runs.local import PID_FILE, kill_orphan, owner_of, start_time

    first, second = two_workers(env, monkeypatch)
    run = claimed_by(first)
    pid_file = Path(run.run_dir) / PID_FILE
    owner = owner_of(first.settings.db_path, first.id)
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        forged = {"pid": unrelated.pid, "start_time": start_time(unrelated.pid), "token": "guessed", **owner}
        for content, why in (
            (str(unrelated.pid), "not one this version writes"),
            (json.dumps({**forged, "start_time": forged["start_time"] + 1}), "started when"),
            (json.dumps(forged), "token"),
            (json.dumps({**forged, "worker_id": second.id}), "not by the run's worker"),
        ):
            pid_file.write_text(content)
            caplog.clear()
            assert not kill_orphan(run.run_dir, owner)
            assert unrelated.poll() is None and why in caplog.text and "left the process" in caplog.text
        # Through recovery too: the run is settled, the process named is left alone and the log says so.
        runs.renew_lease(first.db, run.id, first.id, lease_s=0.01)
        time.sleep(0.05)
        caplog.clear()
        assert second.recover() == [run.id]
        assert unrelated.poll() is None and "left the process" in caplog.text
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_restored_copys_worker_does_not_kill_the_production_trainer(env, monkeypatch, caplog):
    """A backup taken mid-run, restored into another data folder: its pid file names production's live trainer."""
    from bot.runs.local import kill_orphan, owner_of

    first, _ = two_workers(env, monkeypatch)
    run = claimed_by(first)
    production = a_trainer(first, run, db_path=env / "production" / "supportbot.db")  # started for the other database
    try:
        assert not kill_orphan(run.run_dir, owner_of(first.settings.db_path, first.id))
        assert production.poll() is None and "another database" in caplog.text
        assert kill_orphan(run.run_dir, owner_of(env / "production" / "supportbot.db", first.id))  # its own: proven
        assert production.wait(10) == -signal.SIGKILL
    finally:
        if production.poll() is None:
            production.kill()
        production.wait()
