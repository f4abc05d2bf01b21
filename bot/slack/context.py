"""What every listener shares: settings, per-thread database connections, one classifier, a work pool.

Bolt runs listeners on a thread pool, so each thread opens its own database
connection. Model work and Web API calls that can wait go to `submit` (a
bounded pool), never onto the acknowledgement path.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from storage import open_db

from ..settings import Settings

log = logging.getLogger(__name__)

INTAKE_WORKERS = 2


class TrackingExecutor(ThreadPoolExecutor):
    """A thread pool that remembers unfinished work, so shutdown and tests can wait for it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: set[Future] = set()
        self._pending_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = super().submit(fn, *args, **kwargs)
        with self._pending_lock:
            self.pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._pending_lock:
            self.pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("background job failed: %r", future.exception(), exc_info=future.exception())

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
        self.executor = TrackingExecutor(max_workers=settings.workers, thread_name_prefix="supportbot-work")
        # Storing a channel message (files.info, cleaning, the database write) gets a small pool of its own:
        # the listener thread only hands the event over, so no message, however large, holds one up, and
        # storing never waits behind model work.
        self.intake_executor = TrackingExecutor(max_workers=INTAKE_WORKERS, thread_name_prefix="supportbot-intake")
        # Heavy data checks (/datacheck) get one thread of their own, and do their work in a child process
        # (bot.slack.listeners.datacheck): they neither hold up answers nor keep their memory in the bot.
        self.check_executor = TrackingExecutor(max_workers=1, thread_name_prefix="supportbot-check")
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self._pending: set = set()
        self._pending_lock = threading.Lock()

    def db(self):
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_db(self.settings.db_path)
        return db

    def classifier(self):
        """The process's one classifier, loaded on first use, switched to the registry's current adapter."""
        from ..serving import load_classifier, sync_classifier

        with self._classifier_lock:
            if self._classifier is None:
                factory = self._classifier_factory or load_classifier
                self._classifier = factory(self.settings, self.db())
            classifier = self._classifier
        sync_classifier(classifier, self.db())
        return classifier

    def serving_state(self):
        """What answers now (`bot.serving.State`), or None before the classifier was first needed."""
        classifier = self._classifier
        return getattr(classifier, "state", None)

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
            self.intake_executor.wait(timeout)
            self.executor.wait(timeout)
            self.check_executor.wait(timeout)

    def close(self, *, drop_queued: bool = False) -> None:
        """Finish the work in hand. `drop_queued` (a stopping server): queued answers are dropped, not
        waited for; the next start answers them (`intake.answer_backlog`), so a long backlog
        cannot hold a restart up."""
        if drop_queued:
            self.listener_executor.shutdown(wait=True)
            self.intake_executor.shutdown(wait=True)  # acknowledged events: stored before we stop, never dropped
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.check_executor.shutdown(wait=True, cancel_futures=True)
            return
        self.drain()
        self.listener_executor.shutdown(wait=True)
        self.intake_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        self.check_executor.shutdown(wait=True)
