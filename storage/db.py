"""Opening the database: WAL, a busy timeout, migrations applied on open.

A connection belongs to the thread that opened it (sqlite3's default check);
every thread, listener or process calls `open_db` for its own.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

from .migrations import MIGRATIONS

BUSY_TIMEOUT_S = 30.0


def private_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) if needed; a folder created here is readable by its owner only (0700)."""
    folder = Path(folder)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    return folder


def open_db(path: str | Path) -> Database:
    """Open (creating if needed) the database at `path` and bring its schema up to date.

    The file is its owner's only (0600; SQLite gives its -wal and -shm files the same mode), in a
    folder created 0700: it holds every collected message."""
    if str(path) != ":memory:":
        private_folder(Path(path).parent)
        if not Path(path).exists():
            os.close(os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600))
        elif Path(path).stat().st_mode & 0o077:
            try:
                os.chmod(path, 0o600)
            except OSError:  # another user's file, opened to read: leave its mode alone
                pass
    # The timeout is SQLite's busy handler: a writer waits for the lock instead of failing.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    if MIGRATIONS.pending(db):
        # Under the write lock, so two processes opening a new file at once
        # cannot both apply migration 1.
        with write(db):
            MIGRATIONS.apply(db)
    return db


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes can fail at once with
    "database is locked" when another writer got there first: the busy
    timeout does not apply to that upgrade. Taking the lock first makes
    concurrent writers queue instead. Nested calls become savepoints.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    else:
        db.conn.execute("COMMIT")


def now() -> str:
    """UTC timestamp as stored in every table (ISO 8601, sortable)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def schema_version(db: Database) -> list[str]:
    """Names of the migrations applied to this database, in order."""
    return [m.name for m in MIGRATIONS.applied(db)]


def query_one(db: Database, sql: str, params=()) -> dict | None:
    """The first row of `db.query` (sqlite-utils: rows as dicts keyed by column name), or None."""
    return next(db.query(sql, params), None)
