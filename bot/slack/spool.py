"""The intake spool: Slack events the database could not take, kept on disk until it can.

Slack's events are acknowledged before they are stored (Bolt acknowledges first). When
storing fails because the database is busy past its timeout (a long import, a backup, a
stuck writer) or unavailable, the event is appended here, flushed to disk with fsync,
and replayed later (`replay`: every few seconds from the scheduler, and at start).
Storing is idempotent (a message's external id), so replaying an event twice is harmless.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from jsonl import JsonlError, dumps_line, read_rows

log = logging.getLogger(__name__)

# What a spooled event waits out: the database, not the event (a bad event is logged, not retried forever).
RETRYABLE = (sqlite3.OperationalError,)


class Spool:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._append_lock = threading.Lock()
        self._replay_lock = threading.Lock()

    def append(self, record: dict) -> None:
        """Add `record` durably: written and fsynced before this returns."""
        data = dumps_line(record).encode("utf-8")
        with self._append_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def pending(self) -> int:
        """Events waiting (for tests and the logs)."""
        return sum(len(_records(p)) for p in (self.path, self._taken()) if p.exists())

    def _taken(self) -> Path:
        return self.path.with_name(self.path.name + ".replaying")

    def replay(self, handle: Callable[[dict], None]) -> int:
        """Hand each spooled record to `handle`; those that fail on the database again go back. Returns how
        many were handled."""
        with self._replay_lock:
            taken = self._taken()
            if not taken.exists():  # else: a replay that stopped midway; its records come first
                with self._append_lock:
                    if not self.path.exists():
                        return 0
                    os.replace(self.path, taken)  # new events go to a fresh file meanwhile
            records = _records(taken)
            done, left = 0, []
            for i, record in enumerate(records):
                try:
                    handle(record)
                    done += 1
                except RETRYABLE as exc:
                    log.warning("spooled events wait for the database (%s): %d left", exc, len(records) - i)
                    left = records[i:]
                    break
                except Exception:  # noqa: BLE001 - one bad record must not hold up the others
                    log.exception("spooled event could not be handled; dropped after logging")
                    done += 1
            for record in left:
                self.append(record)
            taken.unlink()
            return done


def _records(path: Path) -> list[dict]:
    try:
        return [row for _, row in read_rows(path)]
    except JsonlError as exc:  # a line cut by a crash mid-write: keep the whole ones
        log.warning("intake spool: %s", exc)
        good = []
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                good.append(read_rows(path, line)[0][1])
            except (JsonlError, IndexError):
                continue
        return good
