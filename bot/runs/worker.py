"""The training worker (`supportbot worker`): executes queued runs, one at a time, crash-safe.

It knows storage and the trainer, not Slack: what the channel should see goes
into the outbox, and the bot's relay delivers it. The messages themselves are
made by the `reports` the worker is given at start-up (the Slack face's
bot.slack.reports): the run pipeline records what happened, Slack formats it.

- Claiming is atomic in SQLite, so two workers never take the same run, and a
  claimed run is leased to its worker (storage.runs), renewed while it runs.
- The trainer runs on a backend (bot.runs): a child process that dies with the
  worker, or a Ray actor owned by it (SUPPORTBOT_RAY_ADDRESS). A worker (at start,
  and whenever it is idle) marks a "running" run whose lease expired as interrupted
  (its partial adapter was never registered, so the previous adapter keeps serving)
  and queues it again, once; so does a worker whose Ray run was lost with its node
  or Ray worker. A run whose lease is live belongs to another worker: left alone.
- SIGTERM stops the run, marks the run interrupted and queues it again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

from storage import RunConflict, open_db, outbox, runs

from ..settings import Settings
from .execute import execute_run, new_worker_id, run_dir_for
from .local import kill_orphan, owner_of

log = logging.getLogger(__name__)

DEAD_WORKER = "the worker stopped during this run (its lease expired); nothing it produced was registered"


class Reports(Protocol):
    """What the channel sees of a run, as outbox payloads (bot.slack.reports is one)."""

    def progress_payload(self, run_id: int, record: dict, started: float, last_eval: float | None) -> dict: ...
    def report_payload(self, run_id: int, result: dict, adapter_version: int | None) -> dict: ...
    def failure_payload(self, run_id: int, status: str, error: str | None) -> dict: ...


class Worker:
    def __init__(self, settings: Settings, reports: Reports, *, poll_s: float = 2.0, progress_every_s: float = 5.0):
        self.settings = settings
        self.reports = reports
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self._local = threading.local()
        self.stop_requested = threading.Event()
        self._handle = None  # the executing run's backend handle (bot.runs)
        self.id = new_worker_id("worker")  # the runs it claims are leased to it

    @property
    def db(self):
        """The calling thread's connection (connections are never shared across threads)."""
        if getattr(self._local, "db", None) is None:
            self._local.db = open_db(self.settings.db_path)
        return self._local.db

    # -- reporting through the outbox --------------------------------------------------------------------
    def _say(self, key: str, payload: dict, **kwargs) -> None:
        if self.settings.report_channel:
            outbox.put(self.db, key, self.settings.report_channel, payload, **kwargs)

    # -- recovery ------------------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """Settle runs a dead worker left 'running' (lease expired): interrupted, orphan killed, queued again once.

        A run whose lease is live is another worker's (a rolling deploy starts a second one): left alone.
        Nothing a dead run produced was registered, and its worker can no longer register anything
        (storage.runs.finish_run with its worker id), so the previous adapter keeps serving. The
        requested retrain is not lost: it is queued again, once (`retry_of`); a run that dies a
        second time (a trainer that kills its host by running out of memory, say) is left
        interrupted for a person to look at, rather than crash-looping.
        """
        recovered = []
        for run in runs.expired_runs(self.db):
            if runs.interrupt_expired(self.db, run.id, error=DEAD_WORKER) is None:
                continue  # its worker renewed the lease just now, or another worker settled it first
            if run.run_dir and kill_orphan(run.run_dir, owner_of(self.settings.db_path, run.worker_id)):
                log.warning("killed the orphaned trainer of run %d", run.id)
            note = "The worker stopped during this run (restart or crash). " + self._queue_again(run, once=True)
            self._say(f"run:{run.id}:report", self.reports.failure_payload(run.id, "interrupted", note))
            log.warning("run %d interrupted: %s", run.id, note)
            recovered.append(run.id)
        return recovered

    def _queue_again(self, run, *, once: bool) -> str:
        """Queue an interrupted run again as a retry of it (`retry_of`); returns what the report says about it.

        `once`: a run that was itself a retry is not queued again (a crash that repeats is left for a person).
        """
        if once and run.params.get("retry_of"):
            return f"It was already a retry of run {run.params['retry_of']}: not queued again."
        try:
            again = runs.queue_run(self.db, requested_by=run.requested_by, params={**run.params, "retry_of": run.id})
        except RunConflict as exc:  # someone queued a run meanwhile: it trains on the same data
            return f"Not queued again: {exc}."
        return f"Queued again as run {again.id}."

    # -- the loop --------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        self.recover()
        log.info("worker ready; polling for queued runs every %.1f s", self.poll_s)
        while not self.stop_requested.is_set():
            if not self.run_once():
                self.recover()  # a run another worker holds is recovered once its lease expires
                self.stop_requested.wait(self.poll_s)

    def run_once(self) -> bool:
        """Execute the next queued run, if any. Returns whether one ran."""
        run = runs.claim_next_run(
            self.db,
            run_dir_for=lambda i: run_dir_for(self.settings, i),
            worker_id=self.id,
            lease_s=self.settings.run_lease_s,
        )
        if run is None:
            return False
        log.info("run %d claimed (asked by %s)", run.id, run.requested_by)
        started, last = time.time(), {"at": 0.0, "eval": None}
        self._say(f"run:{run.id}:progress", self.reports.progress_payload(run.id, {"step": 0}, started, None))

        def progress(record: dict) -> None:
            if record.get("kind") == "eval":
                last["eval"] = record.get("eval_loss")
            if time.time() - last["at"] >= self.progress_every_s:  # throttled: well inside chat.update limits
                last["at"] = time.time()
                self._say(
                    f"run:{run.id}:progress", self.reports.progress_payload(run.id, record, started, last["eval"])
                )

        def remember(handle) -> None:
            self._handle = handle

        outcome = execute_run(
            self.settings, self.db, run, on_progress=progress, on_start=remember, interrupted=self.stop_requested.is_set
        )
        self._handle = None
        self._finish(outcome)
        return True

    def _finish(self, outcome) -> None:
        run = outcome.run
        key = f"run:{run.id}:report"
        if outcome.lease_lost:  # the worker that took it over reported it and queued it again
            log.warning(
                "run %d was taken over by another worker; this one recorded nothing of it: %s",
                run.id,
                outcome.lease_lost,
            )
            return
        if run.status == "succeeded":
            result = outcome.result
            self._say(
                f"run:{run.id}:progress",
                self.reports.progress_payload(
                    run.id,
                    {
                        "step": result["training"]["global_step"],
                        "max_steps": result["training"]["max_steps"],
                        "epoch": (result["training"]["epochs"] or [{}])[-1].get("epoch"),
                        "finished": True,
                    },
                    time.time(),
                    None,
                ),
            )
            self._say(key, self.reports.report_payload(run.id, result, outcome.adapter.version))
            picture = Path(result["adapter_dir"]).parent / "report.png"
            if picture.exists():
                self._say(
                    f"run:{run.id}:picture",
                    {"path": str(picture), "title": f"Training run {run.id}", "filename": f"run-{run.id}-report.png"},
                    kind="file",
                    after_key=key,
                )
            log.info("run %d succeeded: adapter v%d, promoted=%s", run.id, outcome.adapter.version, outcome.promoted)
            return
        if run.status == "interrupted" and not self.stop_requested.is_set():  # lost with its host or worker
            note = f"The run was lost: {run.error}. " + self._queue_again(run, once=True)
            self._say(key, self.reports.failure_payload(run.id, "interrupted", note))
            log.warning("run %d interrupted: %s", run.id, note)
            return
        if run.status == "interrupted":  # a stop (SIGTERM) is no fault of the run's: queued again even if a retry
            note = "The worker was stopped. " + self._queue_again(run, once=False)
            self._say(key, self.reports.failure_payload(run.id, "interrupted", note))
            log.warning("run %d interrupted by a stop: %s", run.id, note)
            return
        self._say(key, self.reports.failure_payload(run.id, run.status, run.error))
        log.warning("run %d %s: %s", run.id, run.status, run.error)

    # -- signals ---------------------------------------------------------------------------------------------
    def handle_sigterm(self, signum, frame) -> None:
        """Stop cleanly: the executing run first, then the loop (the run is re-queued)."""
        self.stop_requested.set()
        handle = self._handle
        if handle is not None:
            handle.stop()


def main(settings: Settings, reports: Reports) -> None:
    worker = Worker(settings, reports)
    signal.signal(signal.SIGTERM, worker.handle_sigterm)
    signal.signal(signal.SIGINT, worker.handle_sigterm)
    worker.run_forever()
