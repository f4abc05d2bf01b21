"""Backing up and restoring a data folder: the database (a consistent snapshot, safe while the bot runs)
and the adapter registry's files, in one .tar.gz."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from .db import open_db, write
from .errors import StorageError


def backup(db_path: Path, adapters_dir: Path, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "supportbot.db"
        source = sqlite3.connect(str(db_path))
        target = sqlite3.connect(str(snapshot))
        with target:
            source.backup(target)  # SQLite's online backup: consistent even while others write
        source.close()
        target.close()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a copy of every message: private
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
            archive.add(snapshot, arcname="supportbot.db")
            if adapters_dir.is_dir():
                for folder in sorted(adapters_dir.iterdir()):
                    if folder.is_dir() and not folder.name.startswith("."):
                        archive.add(folder, arcname=f"adapters/{folder.name}")
    return out


def restore(archive_path: Path, db_path: Path, adapters_dir: Path, *, force: bool = False) -> int:
    """Restore into this data folder; returns the number of messages restored. Refuses to overwrite unless forced."""
    if db_path.exists() and not force:
        raise StorageError(f"{db_path} exists; restoring would replace it (use --force after stopping the bot)")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive_path, "r:gz") as archive:
        names = archive.getnames()
        if "supportbot.db" not in names:
            raise StorageError(f"{archive_path} is not a supportbot backup (no supportbot.db inside)")
        archive.extractall(tmp, filter="data")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
        shutil.copy2(Path(tmp) / "supportbot.db", db_path)
        if (Path(tmp) / "adapters").is_dir():
            adapters_dir.mkdir(parents=True, exist_ok=True)
            for folder in (Path(tmp) / "adapters").iterdir():
                shutil.rmtree(adapters_dir / folder.name, ignore_errors=True)
                shutil.copytree(folder, adapters_dir / folder.name)
    db = open_db(db_path)  # brings an older backup's schema up to date
    with write(db):
        # Adapter paths point into the folder the backup came from: point them here.
        for version, path in db.execute("SELECT version, path FROM adapters").fetchall():
            db.execute("UPDATE adapters SET path = ? WHERE version = ?", [str(adapters_dir / Path(path).name), version])
    return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
