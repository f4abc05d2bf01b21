"""Inputs that used to break training, data kept private and bounded in time, intake that never loses an event."""

import datetime as dt
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from jsonl import dumps_line, write_jsonl
from slack_standin import payloads
from storage import ImportFormatError, importing, labels, messages, open_db, runs
from textprep.cleaning import text_cleaner
from trainer.data import read_jsonl

from .conftest import make_run_dir, toy_config, toy_examples
from .test_bot import AGENT, INTAKE, bot  # noqa: F401

CLEAN = text_cleaner(redact_personal=False)

BREAKERS = "one\u2028two\u2029three\u0085four"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_jsonl_round_trips_line_breaking_characters(tmp_path):
    rows = [{"text": f"{BREAKERS} {i}", "label": "complaint"} for i in range(3)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    raw = (tmp_path / "train.jsonl").read_text(encoding="utf-8")
    assert "\u2028" not in raw and raw.count("\n") == 3
    assert read_jsonl(tmp_path / "train.jsonl") == rows
    # A file written before the fix (the characters raw) reads back too: lines end at "\n" only.
    (tmp_path / "old.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    assert read_jsonl(tmp_path / "old.jsonl") == rows
    assert mode(tmp_path / "train.jsonl") == 0o600


def test_labeled_message_with_u2028_trains_after_export_and_import(db, tmp_path):
    """The training data the bot writes for a run, and an export imported elsewhere, read back whole."""
    from storage.labels import training_examples

    labels.add_label_def(db, "complaint")
    for i in range(3):
        m, _ = messages.add_message(
            db,
            source="slack_message",
            external_id=f"slack:C1:{i}.1",
            raw_body=f"{BREAKERS} {i}",
            clean_body=f"{BREAKERS} {i}",
        )
        labels.add_label(db, m.id, "complaint", by="U1", method="button")
    write_jsonl(tmp_path / "train.jsonl", training_examples(db))
    assert [r["text"] for r in read_jsonl(tmp_path / "train.jsonl")] == [f"{BREAKERS} {i}" for i in range(3)]
    exported = tmp_path / "export.jsonl"
    exported.write_text(
        "".join(
            dumps_line({"instruction": "Classify", "input": f"{BREAKERS} {i}", "output": "complaint"}) for i in range(3)
        ),
        encoding="utf-8",
    )
    examples = importing.read_examples(exported)
    assert [e.text for e in examples] == [f"{BREAKERS} {i}" for i in range(3)]


def test_deeply_nested_jsonl_and_huge_csv_field_are_import_errors(tmp_path):
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"instruction": "x", "input": "y", "output": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ImportFormatError, match="line 2: JSON nested too deeply"):
        importing.read_examples(nested)
    big = tmp_path / "big.csv"
    big.write_text('text,label\nfine,a\n"' + "x" * 200_000 + '",b\n')
    with pytest.raises(ImportFormatError, match="line 3: unreadable CSV"):
        importing.read_examples(big)


def test_import_is_stored_in_short_transactions(db, tmp_path):
    source = tmp_path / "many.csv"
    source.write_text("text,label\n" + "".join(f"message {i},l{i % 3}\n" for i in range(10)))
    commits = []
    db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    result = importing.import_examples(db, source, importing.read_examples(source), chunk_rows=3, clean=CLEAN)
    db.conn.set_trace_callback(None)
    assert result.stored == 10 and len(commits) >= 5  # labels, then 4 chunks of at most 3 rows
    assert importing.import_examples(db, source, importing.read_examples(source), chunk_rows=3, clean=CLEAN).stored == 0


def test_an_import_over_the_label_cap_is_refused_before_storing(db, tmp_path):
    source = tmp_path / "labels.csv"
    source.write_text("text,label\n" + "".join(f"m {i},label{i}\n" for i in range(101)))
    with pytest.raises(ImportFormatError, match="more than 100"):
        importing.import_examples(db, source, importing.read_examples(source), clean=CLEAN)
    assert messages.count_messages(db) == 0 and labels.list_label_defs(db) == []


def test_report_picture_draws_label_names_that_look_like_math(tmp_path):
    from trainer.report import draw_report

    names = ["$\\notacommand{$", "a_b$c", "plain"]
    metrics = {
        "confusion": {"labels": names, "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }
    draw_report(tmp_path / "report.png", [{"kind": "train", "step": 1, "train_loss": 1.0}], metrics)
    assert (tmp_path / "report.png").stat().st_size > 0


def test_a_failing_picture_never_fails_a_finished_run(tiny_model_dir, tmp_path, monkeypatch):
    import trainer.report
    from trainer.run import run

    def broken(*args, **kwargs):
        raise ValueError("picture went wrong")

    monkeypatch.setattr(trainer.report, "draw_report", broken)
    run_dir = make_run_dir(tmp_path / "run", toy_config(tiny_model_dir, epochs=1), toy_examples(per_label=4))
    result = run(run_dir)
    assert result["status"] == "succeeded" and (run_dir / "adapter").is_dir()
    assert result["picture_error"] == "ValueError: picture went wrong" and not (run_dir / "report.png").exists()
    assert "picture could not be drawn" in (run_dir / "report.md").read_text()


def test_event_arriving_while_another_connection_holds_the_write_lock_is_spooled_then_stored(bot, monkeypatch):
    """A long import (or anything) holds the write lock past the busy timeout: the acknowledged event waits on
    disk and is stored and answered once the lock is free."""
    import storage.db
    from bot.slack.listeners.intake import replay_spool

    monkeypatch.setattr(storage.db, "BUSY_TIMEOUT_S", 0.3)  # the listener's connection gives up quickly
    bot.ctx._local = threading.local()  # connections opened from now on use it
    holder = sqlite3.connect(str(bot.ctx.settings.db_path), timeout=1)
    holder.execute("BEGIN IMMEDIATE")
    try:
        ts = bot.next_ts()
        response = bot.event(payloads.message_event(INTAKE, AGENT, "Lost while the import ran?", ts))
        assert response.status == 200  # acknowledged
        bot.settle()
        assert bot.ctx.intake_spool().pending() == 1
    finally:
        holder.rollback()
        holder.close()
    assert messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)) is None
    assert replay_spool(bot.ctx, bot.app.client) == 1
    bot.settle()
    stored = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert stored is not None and stored.clean_body == "Lost while the import ran?"
    assert bot.ctx.intake_spool().pending() == 0 and replay_spool(bot.ctx, bot.app.client) == 0
    assert any(c.params.get("thread_ts") == ts for c in bot.standin.wait_for("chat.postMessage"))


def test_data_folder_database_backup_and_run_files_are_private(tmp_path):
    from bot.cli import open_new_file
    from bot.runs.execute import prepare_run
    from bot.settings import Settings
    from storage.backup import backup

    data = tmp_path / "data"
    db = open_db(data / "supportbot.db")
    labels.add_label_def(db, "complaint")
    m, _ = messages.add_message(db, source="slack_message", external_id="slack:C1:1.1", raw_body="private words")
    labels.add_label(db, m.id, "complaint", by="U1", method="button")
    assert mode(data) == 0o700 and mode(data / "supportbot.db") == 0o600
    assert mode(data / "supportbot.db-wal") == 0o600
    (tmp_path / "out").mkdir()
    with open_new_file(tmp_path / "out" / "backup.tar.gz", False, binary=True) as out:
        backup(data / "supportbot.db", data / "adapters", out)
    assert mode(tmp_path / "out" / "backup.tar.gz") == 0o600
    settings = Settings(data_dir=data)
    run = runs.queue_run(db, requested_by="U1", params={})
    run_dir = prepare_run(settings, db, run)
    assert mode(run_dir) == 0o700 and mode(run_dir / "train.jsonl") == 0o600


def test_run_inputs_are_deleted_after_the_retention_setting(db, tmp_path):
    from bot.runs.retention import remove_old_run_inputs
    from bot.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", keep_run_inputs_days=30)
    folders = []
    for _ in range(2):
        run = runs.queue_run(db, requested_by="U1", params={})
        folder = tmp_path / f"run-{run.id}"
        make_run_dir(folder, {}, [{"text": "customer text", "label": "a"}], [{"text": "more", "label": "a"}])
        (folder / "metrics.jsonl").write_text("{}\n")
        (folder / "unlabelled.jsonl").write_text('{"text": "unlabelled customer text"}\n')
        (folder / "unlabelled.npy").write_bytes(b"vectors of it")
        runs.claim_run(db, run.id, str(folder))
        runs.finish_run(db, run.id, "succeeded")
        folders.append(folder)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    assert remove_old_run_inputs(settings, db).startswith("removed 0 files")  # both finished just now
    assert remove_old_run_inputs(settings, db, now=later).startswith("removed 8 files")
    for folder in folders:
        assert not (folder / "train.jsonl").exists() and not (folder / "eval.jsonl").exists()
        assert not (folder / "unlabelled.jsonl").exists() and not (folder / "unlabelled.npy").exists()
        assert (folder / "metrics.jsonl").exists()  # what the run measured stays


def supportbot(*args):
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True)


def one_line_error(result, *expected: str) -> str:
    err = result.stderr.decode("utf-8", "replace").strip()
    assert result.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for part in expected:
        assert part in err, err
    return err


def test_cli_bad_inputs_end_in_one_clear_line(env):
    big = env / "big.csv"
    big.write_bytes(b'text,label\n"' + b"x" * (50 * 1024 * 1024) + b'",a\n')
    one_line_error(supportbot("import", str(big)), "line 2: unreadable CSV")
    nested = env / "nested.jsonl"
    nested.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    one_line_error(supportbot("import", str(nested)), "line 1: JSON nested too deeply")
    one_line_error(supportbot("labels", "add", os.fsdecode(b"caf\xe9")), "argument 3 is not valid UTF-8")
    one_line_error(supportbot("export", "--out", str(env / "missing" / "out.jsonl")), "does not exist")


def test_export_is_private_never_follows_symlinks_or_overwrites_without_force(env):
    (env / "m.csv").write_text("text,label\nRefund please,refund\nThanks!,feedback\n")
    assert supportbot("import", str(env / "m.csv")).returncode == 0
    out = env / "out.jsonl"
    assert supportbot("export", "--out", str(out)).returncode == 0 and mode(out) == 0o600
    one_line_error(supportbot("export", "--out", str(out)), "exists; use --force")
    assert supportbot("export", "--out", str(out), "--force").returncode == 0
    target = env / "elsewhere.txt"
    target.write_text("keep me")
    (env / "link.jsonl").symlink_to(target)
    one_line_error(supportbot("export", "--out", str(env / "link.jsonl"), "--force"), "symbolic link")
    assert target.read_text() == "keep me"


def test_spreadsheet_cells_that_look_like_formulas_are_neutralised():
    from bot.cli import spreadsheet_safe

    assert [spreadsheet_safe(v) for v in ('=HYPERLINK("x")', "+1", "-2", "@SUM(A1)", "\tx", "fine", 3)] == [
        '\'=HYPERLINK("x")',
        "'+1",
        "'-2",
        "'@SUM(A1)",
        "'\tx",
        "fine",
        3,
    ]
