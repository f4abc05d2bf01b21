"""What every listener shares: settings, per-thread database connections, one classifier, a work pool.

Bolt runs listeners on a thread pool, so each thread opens its own database
connection, and opens it again after a database failure (`forget_db`): a
connection opened while the file was read-only, or whose disk filled up or was
remounted, would otherwise fail in that thread until a restart. Model work and
Web API calls that can wait go to `submit` (a bounded pool), never onto the
acknowledgement path.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from storage import open_db

from ..settings import Settings
from .channels import Channels

log = logging.getLogger(__name__)

INTAKE_WORKERS = 2


class TrackingExecutor(ThreadPoolExecutor):
    """A thread pool that remembers unfinished work, so shutdown and tests can wait for it."""

    def __init__(self, *args, on_failure=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_failure = on_failure  # called in the failed job's thread, with its exception
        self.pending: set[Future] = set()
        self._pending_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = super().submit(self._run, fn, *args, **kwargs)
        with self._pending_lock:
            self.pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _run(self, fn, /, *args, **kwargs):
        # The failure handler runs here, in the job's own thread: a done-callback may run in the thread
        # that submitted the job (when it had already failed), which would reopen the wrong connection.
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            log.error("background job failed: %r", exc, exc_info=exc)
            if self.on_failure is not None:
                self.on_failure(exc)
            raise

    def _forget(self, future: Future) -> None:
        with self._pending_lock:
            self.pending.discard(future)

    def wait(self, timeout: float) -> None:
        import concurrent.futures
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending_lock:
                waiting = list(self.pending)
            if not waiting:
                return
            concurrent.futures.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))


class BotContext:
    def __init__(self, settings: Settings, classifier_factory=None):
        self.settings = settings
        self._local = threading.local()
        self._classifier = None
        self._classifier_lock = threading.Lock()
        self._classifier_factory = classifier_factory
        # Bolt's listeners (they run after the acknowledgement) and our slower jobs get separate pools,
        # so a backlog of model work never delays acknowledgements.
        self.listener_executor = TrackingExecutor(max_workers=10, thread_name_prefix="supportbot-listener")
        self.executor = TrackingExecutor(
            max_workers=settings.workers, thread_name_prefix="supportbot-work", on_failure=self.db_failed
        )
        # Storing a channel message (files.info, cleaning, the database write) gets a small pool of its own:
        # the listener thread only hands the event over, so no message, however large, holds one up, and
        # storing never waits behind model work.
        self.intake_executor = TrackingExecutor(
            max_workers=INTAKE_WORKERS, thread_name_prefix="supportbot-intake", on_failure=self.db_failed
        )
        # Heavy data checks (/datacheck) get one thread of their own, and do their work in a child process
        # (bot.slack.listeners.datacheck): they neither hold up answers nor keep their memory in the bot.
        self.check_executor = TrackingExecutor(max_workers=1, thread_name_prefix="supportbot-check")
        # Commands whose answer needs the Web API (who is in a channel) or a longer database read are
        # acknowledged at once and answered from here: neither Slack's latency nor a busy model pool
        # delays the acknowledgement or the answer.
        self.command_executor = TrackingExecutor(max_workers=4, thread_name_prefix="supportbot-command")
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self._pending: set = set()
        self._pending_lock = threading.Lock()
        self.channels = Channels()  # channel members and privacy, as Slack says (bot.slack.channels)
        self._intake_spool = None
        self._intake_spool_lock = threading.Lock()

    def intake_spool(self):
        """The process's intake spool (events the database could not take yet), opened on first use."""
        from .spool import Spool

        with self._intake_spool_lock:
            if self._intake_spool is None:
                self._intake_spool = Spool(self.settings.data_dir / "intake-spool.jsonl")
            return self._intake_spool

    def db(self):
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_db(self.settings.db_path)
        return db

    def forget_db(self) -> None:
        """Close this thread's connection: the next `db()` opens a fresh one, which sees the file as it is now."""
        db, self._local.db = getattr(self._local, "db", None), None
        if db is not None:
            try:
                db.conn.close()
            except sqlite3.Error:  # a broken connection may not even close; it is dropped either way
                pass

    def db_failed(self, exc: BaseException) -> None:
        """After a failure in this thread: a database error means its connection is opened again next time."""
        if isinstance(exc, sqlite3.DatabaseError):
            log.warning("database error (%s): this thread opens a fresh connection next time", exc)
            self.forget_db()

    def reopens_db(self, fn):
        """`fn`, which after a database error leaves its thread to open a fresh connection (scheduled jobs)."""

        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except sqlite3.DatabaseError as exc:
                self.db_failed(exc)
                raise

        return run

    def classifier(self):
        """The process's one classifier, loaded on first use, switched to the registry's current adapter."""
        from ..serving import load_classifier, sync_classifier

        with self._classifier_lock:
            if self._classifier is None:
                if self._classifier_factory is not None:
                    self._classifier = self._classifier_factory(self.settings, self.db())
                else:
                    self._classifier = load_classifier(
                        self.settings, self.db(), on_unusable=self.report_unusable_adapter
                    )
            classifier = self._classifier
        sync_classifier(classifier, self.db())
        return classifier

    def warm_up(self) -> None:
        """Load the classifier now (at start, on the work pool): an adapter that cannot serve is found and
        reported before the first message waits for it."""
        from ..serving import NoLabels

        try:
            self.classifier()
        except NoLabels as exc:
            log.info("no classifier yet: %s", exc)

    def report_unusable_adapter(self, version: int, reason: str, instead: str) -> None:
        """Say once in the report channel (across restarts: one outbox row per adapter) that it cannot serve."""
        from storage import outbox

        from .reports import unusable_adapter_payload

        key = f"adapter:{version}:unusable"
        if self.settings.report_channel and outbox.get(self.db(), key) is None:
            outbox.put(self.db(), key, self.settings.report_channel, unusable_adapter_payload(version, reason, instead))

    def unusable_adapters(self) -> dict:
        """Adapter versions found unable to serve in this process, with why."""
        return dict(getattr(self._classifier, "unusable", None) or {})

    def serving_state(self):
        """What answers now (`bot.serving.State`), or None before the classifier was first needed."""
        classifier = self._classifier
        return getattr(classifier, "state", None)

    def clean(self, raw: str | bytes) -> str:
        """A message's text as models read it: the one cleaning (and redaction) every door applies."""
        from textprep.cleaning import text_cleaner

        return text_cleaner(self.settings.redact)(raw)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.settings.admins

    def is_intake_channel(self, channel_id: str) -> bool:
        # No intake channels configured: every channel the bot is in is an intake channel.
        return not self.settings.intake_channels or channel_id in self.settings.intake_channels

    def submit(self, fn, *args, **kwargs) -> Future:
        """Run `fn` after the acknowledgement; failures are logged, not lost silently."""
        return self.executor.submit(fn, *args, **kwargs)

    def submit_once(self, key, fn, *args, **kwargs) -> Future | None:
        """`submit`, unless a job under `key` is queued or running (a sweep must not queue the same work twice)."""
        with self._pending_lock:
            if key in self._pending:
                return None
            self._pending.add(key)

        def job():
            try:
                return fn(*args, **kwargs)
            finally:  # inside the job, so whoever sees it finished can queue it again
                with self._pending_lock:
                    self._pending.discard(key)

        try:
            return self.executor.submit(job)
        except BaseException:
            with self._pending_lock:
                self._pending.discard(key)
            raise

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until listeners and the jobs they started are done (tests, shutdown)."""
        for _ in range(3):  # a listener may submit a job after we looked at the work pool
            self.listener_executor.wait(timeout)
            self.command_executor.wait(timeout)
            self.intake_executor.wait(timeout)
            self.executor.wait(timeout)
            self.check_executor.wait(timeout)

    def close(self, *, drop_queued: bool = False) -> None:
        """Finish the work in hand. `drop_queued` (a stopping server): queued answers are dropped, not
        waited for; the next start answers them (`intake.answer_backlog`), so a long backlog
        cannot hold a restart up."""
        if drop_queued:
            self.listener_executor.shutdown(wait=True)
            self.command_executor.shutdown(wait=True)
            self.intake_executor.shutdown(wait=True)  # acknowledged events: stored before we stop, never dropped
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.check_executor.shutdown(wait=True, cancel_futures=True)
            return
        self.drain()
        self.listener_executor.shutdown(wait=True)
        self.command_executor.shutdown(wait=True)
        self.intake_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        self.check_executor.shutdown(wait=True)
