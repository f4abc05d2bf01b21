"""Backup and restore trust nothing in an archive, and the relay uploads only the bot's own pictures."""

import io
import os
import sqlite3
import tarfile

import pytest
from slack_sdk import WebClient
from sqlite_utils import Database

from bot.cli import open_new_file
from bot.slack.relay import Relay
from slack_standin.server import SlackStandIn
from storage import messages, open_db, outbox, runs
from storage.backup import backup, restore
from storage.errors import BackupError
from storage.migrations import MIGRATIONS

from .conftest import supportbot as cli


def supportbot(*args):
    return cli(*args, check=False)


PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64


def one_line_error(result, *expected):
    err = result.stderr.strip()
    assert result.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for part in expected:
        assert part in err, err


def live_folder(tmp_path, name="live", text="the live message"):
    """A data folder with one message and one adapter folder."""
    data = tmp_path / name
    db = open_db(data / "supportbot.db")
    messages.add_message(db, source="import", external_id=f"i:{text}", raw_body=text)
    db.conn.close()
    (data / "adapters" / "run-1").mkdir(parents=True)
    (data / "adapters" / "run-1" / "adapter_model.safetensors").write_bytes(b"live weights")
    return data


def make_backup(data, out):
    with open(out, "wb") as f:
        backup(data / "supportbot.db", data / "adapters", f)
    return out


def archive_with(path, entries):
    """A .tar.gz of `entries`: name -> bytes (a file), or ("link", target), or ("dir",)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, bytes):
                info.size = len(value)
                archive.addfile(info, io.BytesIO(value))
                continue
            info.type = tarfile.SYMTYPE if value[0] == "link" else tarfile.DIRTYPE
            info.linkname = value[1] if value[0] == "link" else ""
            archive.addfile(info)
    return path


def db_bytes(tmp_path, prepare=None, stop_before=None):
    """A database file's bytes, made by our migrations (up to `stop_before`), then changed by `prepare`."""
    path = tmp_path / "made.db"
    path.unlink(missing_ok=True)
    db = Database(sqlite3.connect(str(path)))
    MIGRATIONS.apply(db, stop_before=stop_before)
    db.execute(
        "INSERT INTO messages (source, external_id, raw_body, clean_body, content_hash, received_at) "
        "VALUES ('import', 'i:backup', 'from the backup', 'from the backup', 'h', '2024-01-01')"
    )
    if prepare:
        prepare(db)
    db.conn.commit()
    db.conn.close()
    return path.read_bytes()


def restore_into(data, archive, force=True):
    return restore(archive, data / "supportbot.db", data / "adapters", data / "runs", force=force)


def live_is_untouched(data):
    db = open_db(data / "supportbot.db")
    assert [m["raw_body"] for m in db.query("SELECT raw_body FROM messages")] == ["the live message"]
    assert (data / "adapters" / "run-1" / "adapter_model.safetensors").read_bytes() == b"live weights"
    assert not [p for p in data.iterdir() if p.name.startswith(".restore-")]  # no staging left behind


PLANTED = {
    "trigger": "CREATE TRIGGER copy_out AFTER INSERT ON messages BEGIN "
    "INSERT INTO outbox (key, kind, channel, payload, status, next_attempt_at, created_at) "
    "VALUES ('x' || NEW.id, 'message', 'C0PUBLIC', NEW.raw_body, 'pending', '', ''); END",
    "view": "CREATE VIEW leak AS SELECT raw_body FROM messages",
    "table": "CREATE TABLE extra (x)",
    "index": "CREATE INDEX extra_index ON messages(sender)",
    "changed table": "DROP TRIGGER labels_append_only_delete",
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_restore_refuses_a_database_whose_schema_is_not_the_migrations(tmp_path, kind):
    data = live_folder(tmp_path)
    archive = archive_with(
        tmp_path / "planted.tar.gz", {"supportbot.db": db_bytes(tmp_path, lambda db: db.execute(PLANTED[kind]))}
    )
    with pytest.raises(BackupError, match="schema is not supportbot's"):
        restore_into(data, archive)
    live_is_untouched(data)


def test_restore_refuses_a_trigger_planted_before_the_migrations_it_lacks(tmp_path):
    """A trigger on the migrations table would fire while an older backup is migrated: refused before that."""

    def plant(db):
        db.execute("CREATE TRIGGER on_migrate AFTER INSERT ON _sqlite_migrations BEGIN DELETE FROM messages; END")

    archive = archive_with(
        tmp_path / "old.tar.gz", {"supportbot.db": db_bytes(tmp_path, plant, stop_before="m004_label_exclusion")}
    )
    with pytest.raises(BackupError, match="unexpected or changed: trigger on_migrate"):
        restore_into(tmp_path / "fresh", archive, force=False)
    assert not (tmp_path / "fresh" / "supportbot.db").exists()


def test_an_older_backup_is_migrated_on_restore(tmp_path):
    archive = archive_with(
        tmp_path / "old.tar.gz", {"supportbot.db": db_bytes(tmp_path, stop_before="m004_label_exclusion")}
    )
    assert restore_into(tmp_path / "fresh", archive, force=False) == 1
    restored = open_db(tmp_path / "fresh" / "supportbot.db")
    assert not MIGRATIONS.pending(restored)
    assert "excluded" in restored["labels"].columns_dict


@pytest.mark.parametrize(
    "entries, expected",
    [
        ({"adapters/run-1": ("dir",), "adapters/run-1/loop": ("link", ".")}, "a link or special file"),
        ({"adapters/run-1/../../escape": b"x"}, "not part of a supportbot backup"),
        ({"runs/run-1/report.png": PNG}, "not part of a supportbot backup"),
    ],
    ids=["symlink in adapters", "dot-dot", "unknown folder"],
)
def test_restore_refuses_odd_archive_members_and_keeps_the_live_data(tmp_path, entries, expected):
    data = live_folder(tmp_path)
    good = (make_backup(live_folder(tmp_path, "other", "from the backup"), tmp_path / "b.tar.gz")).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as source:
        db = source.extractfile("supportbot.db").read()
    archive = archive_with(tmp_path / "odd.tar.gz", {"supportbot.db": db, **entries})
    with pytest.raises(BackupError, match=expected):
        restore_into(data, archive)
    live_is_untouched(data)


def test_restore_force_of_a_non_database_keeps_the_live_one_and_says_so_in_one_line(tmp_path, env):
    data = live_folder(env, "data")
    not_db = archive_with(env / "not-db.tar.gz", {"supportbot.db": b"this is not a database" * 100})
    one_line_error(supportbot("restore", str(not_db), "--force"), "not a usable database")
    garbage = env / "garbage.tar.gz"
    garbage.write_bytes(b"not gzip at all")
    one_line_error(supportbot("restore", str(garbage), "--force"), "cannot be restored")
    live_is_untouched(data)


def test_a_failing_swap_puts_the_old_data_back(tmp_path, monkeypatch):
    data = live_folder(tmp_path)
    archive = make_backup(live_folder(tmp_path, "other", "from the backup"), tmp_path / "b.tar.gz")

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.backup.os.replace", refuse)
    with pytest.raises(BackupError, match="the old data is unchanged"):
        restore_into(data, archive)
    live_is_untouched(data)


def test_restore_points_run_folders_and_adapters_at_this_data_folder(tmp_path):
    source = live_folder(tmp_path, "original")
    db = open_db(source / "supportbot.db")
    run = runs.queue_run(db, requested_by="U1")
    runs.claim_run(db, run.id, str(source / "runs" / f"run-{run.id}"))
    db.conn.close()
    archive = make_backup(source, tmp_path / "b.tar.gz")
    copy = tmp_path / "copy"
    assert restore_into(copy, archive, force=False) == 1
    assert runs.get_run(open_db(copy / "supportbot.db"), run.id).run_dir == str(copy / "runs" / f"run-{run.id}")
    assert (copy / "adapters" / "run-1" / "adapter_model.safetensors").read_bytes() == b"live weights"


def test_backup_never_follows_a_symlink_nor_writes_into_a_file_already_there(env):
    open_db(env / "data" / "supportbot.db").conn.close()
    target = env / "elsewhere.txt"
    target.write_text("keep me")
    (env / "link.tar.gz").symlink_to(target)
    one_line_error(supportbot("backup", str(env / "link.tar.gz"), "--force"), "symbolic link")
    assert target.read_text() == "keep me"
    planted = env / "planted.tar.gz"
    planted.write_text("someone else's")
    os.chmod(planted, 0o644)
    one_line_error(supportbot("backup", str(planted)), "exists; use --force")
    assert planted.read_text() == "someone else's"
    os.link(planted, env / "their-handle")  # its owner still holds the file: nothing may be written into it
    assert supportbot("backup", str(planted), "--force").returncode == 0
    assert (env / "their-handle").read_text() == "someone else's"
    assert not planted.samefile(env / "their-handle") and planted.stat().st_mode & 0o777 == 0o600
    with tarfile.open(planted, "r:gz") as archive:
        assert "supportbot.db" in archive.getnames()


def test_a_backup_made_by_the_cli_helper_restores(tmp_path):
    data = live_folder(tmp_path, "original", "from the backup")
    out = tmp_path / "b.tar.gz"
    with open_new_file(out, False, binary=True) as f:
        backup(data / "supportbot.db", data / "adapters", f)
    assert restore_into(tmp_path / "copy", out, force=False) == 1


@pytest.fixture
def standin():
    server = SlackStandIn().start()
    yield server
    server.stop()


def test_relay_uploads_only_png_pictures_inside_the_runs_folder(tmp_path, standin):
    runs_dir = tmp_path / "data" / "runs"
    (runs_dir / "run-1").mkdir(parents=True)
    picture = runs_dir / "run-1" / "report.png"
    picture.write_bytes(PNG)
    (runs_dir / "run-1" / "train.jsonl").write_text('{"text": "private words"}\n')
    secret = tmp_path / "environ"
    secret.write_bytes(PNG + b"SLACK_BOT_TOKEN=xoxb-secret")
    (runs_dir / "run-1" / "link.png").symlink_to(secret)
    db = open_db(tmp_path / "data" / "supportbot.db")
    rows = {
        "environ": "/proc/self/environ",
        "outside": str(secret),
        "link": str(runs_dir / "run-1" / "link.png"),
        "jsonl": str(runs_dir / "run-1" / "train.jsonl"),
        "dotdot": str(runs_dir / ".." / "environ"),
        "picture": str(picture),
    }
    for key, path in rows.items():
        outbox.put(db, key, "C9", {"path": path, "filename": f"{key}.png"}, kind="file")
    Relay(lambda: db, WebClient(token=standin.bot_token, base_url=standin.api_url), files_dir=runs_dir).deliver_due()
    assert list(standin.uploads.values()) == [PNG]
    assert outbox.get(db, "picture").status == "sent"
    for key in set(rows) - {"picture"}:
        item = outbox.get(db, key)
        assert item.status == "failed" and item.error.startswith("refused: "), (key, item.error)
