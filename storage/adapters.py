"""The adapter registry: versions, which one is current, promotion and rollback.

Switching the current adapter is one transaction, and a unique index allows
one current adapter: a crash leaves either the old or the new one current.
Each adapter's files are checksummed when it is registered (`folder_checksum`),
so whoever serves it can tell a folder changed, cut short or deleted since
(`check_files`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from .db import now, query_one, write
from .errors import NotFound


@dataclass(frozen=True)
class Adapter:
    version: int
    run_id: int | None
    path: str
    base_model: str
    labels: list[str]
    metrics: dict
    created_at: str
    promoted_at: str | None
    is_current: bool
    checksum: str | None = None  # folder_checksum at registration (None: registered before checksums)


def _adapter(row: dict) -> Adapter:
    return Adapter(
        **{
            **row,
            "labels": json.loads(row["labels"]),
            "metrics": json.loads(row["metrics"]),
            "is_current": bool(row["is_current"]),
        }
    )


def register_adapter(
    db: Database,
    *,
    path: str,
    base_model: str,
    labels: list[str],
    metrics: dict,
    run_id: int | None = None,
    checksum: str | None = None,
) -> Adapter:
    """Record a finished adapter (its files must already be complete on disk). Not yet current.

    The checksum of its folder is recorded with it (none when there is no folder at `path`). A caller
    inside a longer transaction passes `checksum` (`folder_checksum`, computed before it took the write
    lock), so the lock is never held while every byte of the adapter is read."""
    if checksum is None and Path(path).is_dir():
        checksum = folder_checksum(path)
    with write(db):
        cursor = db.execute(
            "INSERT INTO adapters (run_id, path, base_model, labels, metrics, created_at, checksum) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [run_id, path, base_model, json.dumps(labels), json.dumps(metrics), now(), checksum],
        )
    return get_adapter(db, cursor.lastrowid)


def folder_checksum(path: str | Path) -> str:
    """sha256 over every file in the folder: its path inside the folder and its bytes, in path order."""
    folder, digest = Path(path), hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def check_files(adapter: Adapter) -> str | None:
    """What is wrong with the adapter's folder on disk (missing, changed since it was registered), or None."""
    folder = Path(adapter.path)
    if not folder.is_dir():
        return f"its folder {folder.name} is missing"
    if adapter.checksum is not None:
        try:
            found = folder_checksum(folder)
        except OSError as exc:
            return f"its files cannot be read ({exc.strerror or exc})"
        if found != adapter.checksum:
            return "its files changed since it was registered (checksum mismatch)"
    return None


def get_adapter(db: Database, version: int) -> Adapter:
    row = query_one(db, "SELECT * FROM adapters WHERE version = ?", [version])
    if row is None:
        raise NotFound(f"no adapter version {version}")
    return _adapter(row)


def current_adapter(db: Database) -> Adapter | None:
    row = query_one(db, "SELECT * FROM adapters WHERE is_current = 1")
    return _adapter(row) if row else None


def list_adapters(db: Database) -> list[Adapter]:
    return [_adapter(r) for r in db.query("SELECT * FROM adapters ORDER BY version DESC")]


def promote(db: Database, version: int) -> Adapter:
    """Make `version` the current adapter, atomically."""
    get_adapter(db, version)
    with write(db):
        db.execute("UPDATE adapters SET is_current = 0 WHERE is_current = 1")
        db.execute(
            "UPDATE adapters SET is_current = 1, promoted_at = COALESCE(promoted_at, ?) WHERE version = ?",
            [now(), version],
        )
    return get_adapter(db, version)


def rollback(db: Database) -> Adapter:
    """Make the previously promoted adapter current again (NotFound when there is none)."""
    current = current_adapter(db)
    if current is None:
        raise NotFound("no adapter is current: nothing to roll back")
    row = query_one(
        db,
        """SELECT version FROM adapters WHERE promoted_at IS NOT NULL AND version < ?
                           ORDER BY version DESC LIMIT 1""",
        [current.version],
    )
    if row is None:
        raise NotFound(f"adapter {current.version} is the first promoted one: nothing to roll back to")
    return promote(db, row["version"])
