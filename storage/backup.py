"""Backing up and restoring a data folder: the database (a consistent snapshot, safe while the bot runs)
and the adapter registry's files, in one .tar.gz.

A restore trusts nothing in the archive: it is unpacked into a staging folder inside the data folder, every
member is checked (the database and adapter folders of regular files; no links), the database must be a
supportbot database whose schema is exactly what the migrations make, and only then is the live data
swapped for it with renames. Any failure leaves the live data as it was and says why in one line.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from sqlite_utils import Database

from .db import open_db, private_folder, write
from .errors import BackupError
from .migrations import MIGRATIONS

DB_NAME = "supportbot.db"
# A folder the registry or the worker names (run-7): a restored path keeps only this last part.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def backup(db_path: Path, adapters_dir: Path, out: BinaryIO) -> None:
    """Write the backup as .tar.gz into `out`, a binary file the caller opened (the CLI: new, owner-only,
    never through a symbolic link). Refuses an adapter folder holding a link: its restore would refuse it."""
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / DB_NAME
        source = sqlite3.connect(str(db_path))
        target = sqlite3.connect(str(snapshot))
        with target:
            source.backup(target)  # SQLite's online backup: consistent even while others write
        source.close()
        target.close()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            archive.add(snapshot, arcname=DB_NAME)
            if adapters_dir.is_dir():
                for folder in sorted(adapters_dir.iterdir()):
                    if folder.is_dir() and not folder.is_symlink() and not folder.name.startswith("."):
                        archive.add(folder, arcname=f"adapters/{folder.name}", filter=_plain_member)


def _plain_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    if not (member.isfile() or member.isdir()):
        raise BackupError(f"{member.name} is not a regular file or folder; a backup holds only those")
    return member


def restore(archive_path: Path, db_path: Path, adapters_dir: Path, runs_dir: Path, *, force: bool = False) -> int:
    """Restore into this data folder; returns the number of messages restored. Refuses to overwrite unless forced.

    Adapter and run paths are pointed at `adapters_dir` and `runs_dir`: left pointing at the folder the backup
    came from, a restored copy would load, clean up or delete that folder's files."""
    if db_path.exists() and not force:
        raise BackupError(f"{db_path} exists; restoring would replace it (use --force after stopping the bot)")
    # Staging inside the data folder: the swap is then renames on one file system.
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=private_folder(db_path.parent)))
    try:
        _unpack(archive_path, staging)
        count = _prepare_database(staging / DB_NAME, adapters_dir, runs_dir, archive_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, db_path, adapters_dir)
    return count


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unpack(archive_path: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            members = archive.getmembers()
            _check_members(archive_path, members)
            needed, free = sum(m.size for m in members), shutil.disk_usage(staging).free
            if needed > free:
                raise BackupError(f"{archive_path} unpacks to {needed >> 20} MiB; only {free >> 20} MiB are free")
            archive.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupError(f"{archive_path} cannot be restored: {_one_line(exc)}") from None


def _check_members(archive_path: Path, members: list[tarfile.TarInfo]) -> None:
    """Only supportbot.db and adapters/<name>/... as regular files and folders: no links, devices or odd names."""
    if not any(m.name == DB_NAME and m.isfile() for m in members):
        raise BackupError(f"{archive_path} is not a supportbot backup (no {DB_NAME} inside)")
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name == DB_NAME and member.isfile():
            continue
        plain = (
            len(parts) >= 2
            and parts[0] == "adapters"
            and PLAIN_NAME.fullmatch(parts[1])
            and all(p not in ("", ".", "..") for p in parts)
        )
        if not plain:
            raise BackupError(f"{archive_path} holds {member.name!r}, which is not part of a supportbot backup")
        if not (member.isfile() or member.isdir()):
            raise BackupError(f"{archive_path} holds {member.name!r}, a link or special file; not restoring it")


def _prepare_database(path: Path, adapters_dir: Path, runs_dir: Path, archive_path: Path) -> int:
    """Check the unpacked database, migrate it, point its paths here; returns its message count."""
    _check_before_migrating(path, archive_path)
    try:
        db = open_db(path)  # brings an older backup's schema up to date
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{archive_path}: its database cannot be migrated ({_one_line(exc)})") from None
    try:
        _check_schema(db.conn, archive_path, _schema_after(len(_migration_names())))
        with write(db):
            for version, old in db.execute("SELECT version, path FROM adapters").fetchall():
                db.execute(
                    "UPDATE adapters SET path = ? WHERE version = ?",
                    [str(adapters_dir / _plain_name(old, "an adapter", archive_path)), version],
                )
            for run_id, old in db.execute("SELECT id, run_dir FROM runs WHERE run_dir IS NOT NULL").fetchall():
                db.execute(
                    "UPDATE runs SET run_dir = ? WHERE id = ?",
                    [str(runs_dir / _plain_name(old, "a run", archive_path)), run_id],
                )
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        db.conn.close()


def _check_before_migrating(path: Path, archive_path: Path) -> None:
    """The migrations the backup's database has must be a prefix of ours, its schema exactly theirs.
    Checked before migrating, so that nothing planted in it (a trigger) runs even once."""
    conn = sqlite3.connect(str(path))
    try:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise BackupError(f"{archive_path}: its database is damaged (SQLite's quick_check failed)")
        try:
            applied = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid", [MIGRATIONS.name]
                )
            ]
        except sqlite3.DatabaseError:
            applied = []
        known = _migration_names()
        if not applied or applied != known[: len(applied)]:
            newer = len(applied) > len(known) and applied[: len(known)] == known
            raise BackupError(
                f"{archive_path}: its database was made by a newer supportbot"
                if newer
                else f"{archive_path}: its database is not a supportbot database"
            )
        _check_schema(conn, archive_path, _schema_after(len(applied)))
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{archive_path}: its {DB_NAME} is not a usable database ({_one_line(exc)})") from None
    finally:
        conn.close()


def _migration_names() -> list[str]:
    return [m.name for m in MIGRATIONS.pending(Database(memory=True))]


def _schema(conn: sqlite3.Connection) -> set[tuple]:
    """Every table, index, view and trigger: type, name, table and its SQL with whitespace normalised."""
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {(kind, name, table, " ".join(sql.split()) if sql else None) for kind, name, table, sql in rows}


def _schema_after(count: int) -> set[tuple]:
    """The schema a fresh database has after our first `count` migrations."""
    names = _migration_names()
    fresh = Database(memory=True)
    MIGRATIONS.apply(fresh, stop_before=names[count] if count < len(names) else None)
    try:
        return _schema(fresh.conn)
    finally:
        fresh.conn.close()


def _check_schema(conn: sqlite3.Connection, archive_path: Path, expected: set[tuple]) -> None:
    found = _schema(conn)
    if found != expected:
        extra = sorted(f"{kind} {name}" for kind, name, _, _ in found - expected)
        missing = sorted(f"{kind} {name}" for kind, name, _, _ in expected - found)
        what = "; ".join(
            filter(
                None,
                [
                    f"unexpected or changed: {', '.join(extra)}" if extra else "",
                    f"missing: {', '.join(missing)}" if missing else "",
                ],
            )
        )
        raise BackupError(f"{archive_path}: its database schema is not supportbot's ({what}); not restoring it")


def _plain_name(old, what: str, archive_path: Path) -> str:
    name = PurePath(str(old)).name
    if not PLAIN_NAME.fullmatch(name):
        raise BackupError(f"{archive_path}: {what} path {str(old)[:80]!r} does not end in a plain folder name")
    return name


def _swap_in(staging: Path, db_path: Path, adapters_dir: Path) -> None:
    """Move the restored adapters and database into place, then remove `staging` (with what was replaced).
    On a failure every move is undone; if an undo fails too, `staging` is kept and named: the old files are
    in it."""
    moved: list[tuple[Path, Path]] = []

    def move(source: Path, target: Path) -> None:
        os.rename(source, target)
        moved.append((source, target))

    replaced = staging / "replaced"
    replaced.mkdir()
    try:
        restored = staging / "adapters"
        if restored.is_dir():
            private_folder(adapters_dir)
            for folder in sorted(restored.iterdir()):
                target = adapters_dir / folder.name
                if target.exists() or target.is_symlink():
                    move(target, replaced / folder.name)
                move(folder, target)
        for suffix in ("-wal", "-shm"):  # the old database's log must not be replayed into the new one
            side = Path(str(db_path) + suffix)
            if side.exists():
                move(side, replaced / f"{DB_NAME}{suffix}")
        os.replace(staging / DB_NAME, db_path)  # the one step that changes the live database: atomic
    except OSError as exc:
        all_back = True
        for source, target in reversed(moved):
            try:
                os.rename(target, source)
            except OSError:
                all_back = False
        if not all_back:
            raise BackupError(
                f"could not move the restored data into place ({_one_line(exc)}) nor all the old "
                f"data back; the old files not put back are in {replaced}"
            ) from None
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(
            f"could not move the restored data into place ({_one_line(exc)}); the old data is unchanged"
        ) from None
    shutil.rmtree(staging, ignore_errors=True)
