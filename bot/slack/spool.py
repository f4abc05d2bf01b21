"""The intake spool: Slack events the database could not take, kept on disk until it can.

Slack's events are acknowledged before they are stored (Bolt acknowledges first). When
storing fails because the database is busy past its timeout (a long import, a backup, a
stuck writer), unavailable, read-only or on a full disk, the event is appended here, flushed
to disk with fsync, and replayed later (`replay`: every few seconds from the scheduler, and at
start). Storing is idempotent (a message's external id), so replaying an event twice is harmless.

When the spool file cannot be written either (it is on the same full or read-only disk), the
event is held in memory (`keep`), at most `hold_limit` of them, and replayed with the rest. The
limit is kept before acknowledging: each message event is `admit`ted first (room is reserved for
it should storing fail) and `settled` once stored, spooled or held; an event that finds no room
is refused unacknowledged, so Slack delivers it again later. Nothing acknowledged is dropped while
the process runs; held events are lost only if it dies before the disk recovers.
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

# What a spooled event waits out: the database or the disk, not the event (a bad event is logged, not retried forever).
RETRYABLE = (sqlite3.OperationalError, OSError)
HOLD_LIMIT = 200  # acknowledged events held in memory while neither the database nor the spool file takes them


class Spool:
    def __init__(self, path: str | Path, hold_limit: int = HOLD_LIMIT):
        self.path = Path(path)
        self.hold_limit = hold_limit
        self._append_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._held: list[dict] = []  # acknowledged, kept nowhere else yet (oldest first)
        self._admitted = 0  # acknowledged (or about to be), not yet settled
        self._cut = False  # the file may end in a cut line: the next record starts on a line of its own

    # -- before and after the acknowledgement --------------------------------------------------------

    def admit(self) -> bool:
        """Reserve room to hold one more event should storing it fail; False when there is none (do not
        acknowledge it). Every admitted event is `settled` afterwards."""
        with self._count_lock:
            if len(self._held) + self._admitted >= self.hold_limit:
                return False
            self._admitted += 1
            return True

    def settled(self) -> None:
        """An admitted event was stored, spooled or held: its reservation is no longer needed."""
        with self._count_lock:
            self._admitted = max(0, self._admitted - 1)

    def keep(self, record: dict) -> str:
        """Keep an acknowledged event the database could not take: in the file, else in memory. Returns where."""
        try:
            self.append(record)
            return "spooled"
        except OSError as exc:
            with self._count_lock:
                self._held.append(record)
                held = len(self._held)
            log.error(
                "intake spool cannot be written (%s): event held in memory (%d held, at most %d)",
                exc,
                held,
                self.hold_limit,
            )
            return "held"

    def held(self) -> int:
        with self._count_lock:
            return len(self._held)

    # -- the file ------------------------------------------------------------------------------------

    def append(self, record: dict) -> None:
        """Add `record` durably: written and fsynced before this returns, or not at all (OSError)."""
        data = dumps_line(record).encode("utf-8")
        with self._append_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, b"\n" + data if self._cut else data)
                    os.fsync(fd)
                except OSError:
                    # A line cut short by a full disk would swallow the next one: cut it off.
                    self._cut = not _truncate(fd, size)
                    raise
                self._cut = False
            finally:
                os.close(fd)

    def pending(self) -> int:
        """Events waiting, on disk and in memory (for tests and the logs)."""
        on_disk = sum(len(_records(p)) for p in (self.path, self._taken()) if p.exists())
        return on_disk + self.held()

    def _taken(self) -> Path:
        return self.path.with_name(self.path.name + ".replaying")

    def replay(self, handle: Callable[[dict], None]) -> int:
        """Hand each spooled, then each held, record to `handle`; those that fail on the database again wait
        for the next replay. Returns how many were handled."""
        with self._replay_lock:
            done, finished = self._replay_file(handle)
            if finished:  # in order: the held events came after those in the file
                done += self._replay_held(handle)
            else:
                self._spool_held()
            return done

    def _replay_file(self, handle) -> tuple[int, bool]:
        """(handled, whether the file was emptied)."""
        taken = self._taken()
        if not taken.exists():  # else: a replay that stopped midway; its records come first
            with self._append_lock:
                if not self.path.exists():
                    return 0, True
                try:
                    os.replace(self.path, taken)  # new events go to a fresh file meanwhile
                except OSError as exc:  # a read-only disk: the file stays as it is
                    log.warning("intake spool cannot be replayed yet (%s)", exc)
                    return 0, False
        records = _records(taken)
        done, left = _hand_over(records, handle)
        try:
            for record in left:
                self.append(record)
            taken.unlink()
        except OSError as exc:  # the taken file stays and comes first next time (storing twice is harmless)
            log.warning("intake spool: %d events wait in %s (%s)", len(left), taken.name, exc)
            return done, False
        return done, not left

    def _replay_held(self, handle) -> int:
        done, left = _hand_over(self._take_held(), handle)
        self._spool_or_hold(left)
        return done

    def _spool_held(self) -> None:
        """The database still cannot take events: the held ones go to the file if it can take them now."""
        self._spool_or_hold(self._take_held())

    def _take_held(self) -> list[dict]:
        with self._count_lock:
            held, self._held = self._held, []
        return held

    def _spool_or_hold(self, records: list[dict]) -> None:
        left = []
        for record in records:
            try:
                self.append(record)
            except OSError:
                left.append(record)
        with self._count_lock:
            self._held[:0] = left  # before any held meanwhile: they are older


def _hand_over(records: list[dict], handle) -> tuple[int, list[dict]]:
    """Hand records to `handle` in order until one fails on the database. Returns (handled, the rest)."""
    done = 0
    for i, record in enumerate(records):
        try:
            handle(record)
            done += 1
        except RETRYABLE as exc:
            log.warning("spooled events wait for the database (%s): %d left", exc, len(records) - i)
            return done, records[i:]
        except Exception:  # noqa: BLE001 - one bad record must not hold up the others
            log.exception("spooled event could not be handled; dropped after logging")
            done += 1
    return done, []


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _truncate(fd: int, size: int) -> bool:
    try:
        os.ftruncate(fd, size)
        return True
    except OSError as exc:
        log.error("intake spool: a cut line could not be removed (%s); it is skipped when read", exc)
        return False


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
