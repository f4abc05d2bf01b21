import sqlite3
import threading

import pytest

from storage import NotFound, RunConflict, UnknownLabel, adapters, labels, messages, open_db, predictions, runs
from storage.db import schema_version, write
from storage.migrations import MIGRATIONS


def test_migrations_apply_on_empty_database_and_again_on_reopen(db_path):
    db = open_db(db_path)
    applied = schema_version(db)
    assert applied == [m.name for m in MIGRATIONS._migrations]
    assert {"messages", "labels", "label_set", "predictions", "runs", "run_metrics", "adapters"} <= set(
        db.table_names()
    )
    messages.add_message(db, source="import", external_id="x:1", raw_body="hello")
    db.conn.close()
    again = open_db(db_path)
    assert schema_version(again) == applied  # nothing re-applied
    assert messages.count_messages(again) == 1  # data kept


def test_database_uses_wal(db):
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_duplicate_delivery_stored_once(db):
    key = messages.slack_external_id("C1", "1700000000.000100")
    first, created = messages.add_message(
        db,
        source="email",
        external_id=key,
        raw_body="Card  broken\n",
        channel="C1",
        ts="1700000000.000100",
        event_id="Ev1",
    )
    second, created_again = messages.add_message(
        db,
        source="email",
        external_id=key,
        raw_body="Card broken",
        channel="C1",
        ts="1700000000.000100",
        event_id="Ev1",
    )
    assert created and not created_again
    assert first.id == second.id
    assert messages.count_messages(db) == 1
    assert first.clean_body == "Card broken"


def test_label_history_and_current_label(db):
    labels.add_label_def(db, "complaint", "Unhappy customer")
    labels.add_label_def(db, "question")
    m, _ = messages.add_message(db, source="slack_message", external_id="slack:C1:1", raw_body="Why?")
    assert labels.current_label(db, m.id) is None
    labels.add_label(db, m.id, "complaint", by="U1", method="button")
    labels.add_label(db, m.id, "QUESTION", by="U2", method="slash_command")  # case-insensitive match
    history = labels.label_history(db, m.id)
    assert [(e.label, e.labeled_by, e.method) for e in history] == [
        ("complaint", "U1", "button"),
        ("question", "U2", "slash_command"),
    ]
    assert labels.current_label(db, m.id).label == "question"
    assert labels.label_counts(db) == {"complaint": 0, "question": 1}


def test_label_rows_are_append_only(db):
    labels.add_label_def(db, "question")
    m, _ = messages.add_message(db, source="import", external_id="i:1", raw_body="x")
    labels.add_label(db, m.id, "question", by="U1", method="cli")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM labels")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE labels SET label = 'x'")


def test_unknown_label_lists_valid_ones(db):
    labels.add_label_def(db, "complaint")
    m, _ = messages.add_message(db, source="import", external_id="i:1", raw_body="x")
    with pytest.raises(UnknownLabel, match="valid labels: complaint"):
        labels.add_label(db, m.id, "praise", by="U1", method="button")
    assert labels.label_history(db, m.id) == []


def test_edit_and_delete_keep_labels(db):
    labels.add_label_def(db, "complaint")
    m, _ = messages.add_message(db, source="slack_message", external_id="slack:C1:2", raw_body="bad")
    labels.add_label(db, m.id, "complaint", by="U1", method="button")
    edited = messages.edit_message(db, m.id, raw_body="very bad")
    assert edited.clean_body == "very bad" and edited.edited_at
    assert edited.content_hash != m.content_hash
    deleted = messages.mark_deleted(db, m.id)
    assert deleted.deleted_at
    assert labels.current_label(db, m.id).label == "complaint"
    assert messages.count_messages(db) == 0 and messages.count_messages(db, include_deleted=True) == 1
    assert labels.labeled_messages(db) == []  # deleted messages do not train


def test_eight_threads_write_at_once_without_loss(db_path):
    open_db(db_path)  # migrate first, as the app does at start
    setup = open_db(db_path)
    labels.add_label_def(setup, "question")
    errors, per_thread = [], 60
    barrier = threading.Barrier(8)

    def work(n):
        try:
            own = open_db(db_path)  # one connection per thread
            barrier.wait()
            for i in range(per_thread):
                m, _ = messages.add_message(
                    own, source="slack_message", external_id=f"slack:C{n}:{i}", raw_body=f"thread {n} message {i}"
                )
                labels.add_label(own, m.id, "question", by=f"U{n}", method="button")
                # Read then write in one transaction, as queue_run and claim_next_run do:
                # the pattern that fails with "database is locked" under deferred transactions.
                with write(own):
                    seen = own.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
                    own.execute("UPDATE label_set SET created_at = ? WHERE name = 'question'", [str(seen)])
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = open_db(db_path)
    assert messages.count_messages(check) == 8 * per_thread
    assert check.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 8 * per_thread


def test_run_lifecycle_allows_one_active_run(db, tmp_path):
    run = runs.queue_run(db, requested_by="U1", params={"epochs": 1})
    with pytest.raises(RunConflict, match="already queued"):
        runs.queue_run(db, requested_by="U2")
    claimed = runs.claim_next_run(db, run_dir_for=lambda i: tmp_path / f"run-{i}")
    assert claimed.id == run.id and claimed.status == "running"
    assert runs.claim_next_run(db, run_dir_for=lambda i: tmp_path) is None
    assert (
        runs.add_metrics(
            db,
            run.id,
            [{"kind": "train", "step": 1, "train_loss": 2.0}, {"kind": "train", "step": 1, "train_loss": 2.0}],
        )
        == 1
    )
    done = runs.finish_run(db, run.id, "succeeded")
    assert done.status == "succeeded" and done.finished_at
    with pytest.raises(RunConflict):
        runs.finish_run(db, run.id, "failed")


def test_claim_run_takes_only_that_run_and_only_once(db, tmp_path):
    run = runs.queue_run(db, requested_by="cli")
    assert runs.claim_next_run(db, run_dir_for=lambda i: tmp_path / f"w-{i}").id == run.id  # a worker was faster
    assert runs.claim_run(db, run.id, tmp_path / "cli") is None
    runs.finish_run(db, run.id, "succeeded")
    second = runs.queue_run(db, requested_by="cli")
    claimed = runs.claim_run(db, second.id, tmp_path / "cli")
    assert claimed.status == "running" and claimed.run_dir == str(tmp_path / "cli")


def test_promotion_and_rollback_keep_one_current(db):
    a1 = adapters.register_adapter(db, path="/a/1", base_model="m", labels=["x"], metrics={"macro_f1": 0.5})
    a2 = adapters.register_adapter(db, path="/a/2", base_model="m", labels=["x"], metrics={"macro_f1": 0.6})
    with pytest.raises(NotFound):
        adapters.rollback(db)
    adapters.promote(db, a1.version)
    adapters.promote(db, a2.version)
    assert adapters.current_adapter(db).version == a2.version
    assert db.execute("SELECT COUNT(*) FROM adapters WHERE is_current = 1").fetchone()[0] == 1
    assert adapters.rollback(db).version == a1.version
    assert adapters.current_adapter(db).version == a1.version


def test_live_accuracy_counts_labels_given_after_prediction_per_model_that_answered(db):
    labels.add_label_def(db, "a")
    labels.add_label_def(db, "b")
    answered = [
        (3, "adapter v3", "a"),
        (3, "adapter v3", "b"),
        (None, "embeddings", "a"),
        (None, "embeddings", "a"),
        (None, "embeddings", "b"),
        (3, "adapter v3 + embeddings", "a"),
        (None, None, "a"),
    ]  # the last: stored before predictions named their model
    for i, (version, model, human) in enumerate(answered):
        m, _ = messages.add_message(db, source="import", external_id=f"i:{i}", raw_body=f"message {i}")
        predictions.add_prediction(
            db,
            message_id=m.id,
            adapter_version=version,
            label="a",
            confidence=0.9,
            needs_review=False,
            scores={"a": 0.9, "b": 0.1},
            model=model,
        )
        labels.add_label(db, m.id, human, by="U1", method="button")
    unjudged, _ = messages.add_message(db, source="import", external_id="i:x", raw_body="no label yet")
    predictions.add_prediction(
        db,
        message_id=unjudged.id,
        adapter_version=None,
        label="a",
        confidence=0.9,
        needs_review=False,
        scores={"a": 0.9, "b": 0.1},
        model="embeddings",
    )
    live = predictions.live_accuracy(db)
    assert list(live) == ["embeddings", "adapter v3", "adapter v3 + embeddings", "zero-shot"]
    assert live["embeddings"] == {"n": 3, "confirmed": 2, "corrected": 1, "accuracy": 2 / 3}
    assert live["adapter v3"] == {"n": 2, "confirmed": 1, "corrected": 1, "accuracy": 0.5}
    assert live["adapter v3 + embeddings"]["n"] == 1 and live["zero-shot"]["confirmed"] == 1


def test_queries_the_bot_used_to_write_itself(db):
    """latest_unlabeled (bare /label), new_human_labels (scheduled retrain), least_sure (the digest)."""
    labels.add_label_def(db, "complaint")
    ids = []
    for n, ts in enumerate(("1700000000.000100", "1700000000.000300", "1700000000.000200")):
        m, _ = messages.add_message(
            db, source="slack_message", external_id=f"slack:C1:{ts}", raw_body=f"msg {n}", channel="C1", ts=ts
        )
        ids.append(m.id)
    messages.add_message(
        db, source="slack_message", external_id="slack:C2:1", raw_body="elsewhere", channel="C2", ts="1700000001.000000"
    )
    assert messages.latest_unlabeled(db, "C1").id == ids[1]  # newest by Slack ts, not by id
    labels.add_label(db, ids[1], "complaint", by="U1", method="button")
    assert messages.latest_unlabeled(db, "C1").id == ids[2]
    assert messages.latest_unlabeled(db, "C9") is None
    assert labels.new_human_labels(db, "") == 1
    imported, _ = messages.add_message(db, source="import", external_id="csv:1", raw_body="imported")
    labels.add_label(db, imported.id, "complaint", by="cli", method="import")
    assert labels.new_human_labels(db, "") == 1  # imports are not people's labels
    assert labels.new_human_labels(db, "9999") == 0
    for message_id, confidence in ((ids[0], 0.9), (ids[1], 0.1), (ids[2], 0.4)):
        predictions.add_prediction(
            db,
            message_id=message_id,
            adapter_version=None,
            label="complaint",
            confidence=confidence,
            needs_review=False,
            scores={"complaint": confidence},
        )
    unsure = predictions.least_sure(db, since="", limit=5)
    assert [r["id"] for r in unsure] == [ids[2], ids[0]]  # the labeled one is left out; least sure first
    assert unsure[0]["subject"] == "" and unsure[0]["confidence"] == 0.4


def test_huge_bodies_are_stored_cut_at_the_caps_with_a_note_on_the_raw_body(db, tmp_path):
    """A 41 MB body once took the bot to 6.7 GB: raw, cleaned text and subject are cut when stored."""
    from storage.importing import import_examples, read_examples

    raw = "".join(f"line {i} of a very long email\n" for i in range(20_000))  # about 570,000 characters
    m, _ = messages.add_message(
        db, source="email", external_id="e:huge", raw_body=raw, clean_body=raw, subject="S" * 5000
    )
    assert m.raw_body == raw[: messages.MAX_RAW_CHARS] + messages.cut_note(len(raw))
    assert m.raw_body.endswith(f"only the first 200,000 of {len(raw):,} characters are kept]")
    assert m.clean_body == raw[: messages.MAX_CLEAN_CHARS] and m.subject == "S" * messages.MAX_SUBJECT_CHARS
    assert m.content_hash == messages.content_hash(m.subject, m.clean_body)
    edited = messages.edit_message(db, m.id, raw_body=raw + "edited")
    assert edited.raw_body.startswith(raw[: messages.MAX_RAW_CHARS]) and "cut by supportbot" in edited.raw_body
    assert len(edited.clean_body) <= messages.MAX_CLEAN_CHARS
    small, _ = messages.add_message(db, source="email", external_id="e:small", raw_body="short", subject="Hi")
    assert (small.raw_body, small.clean_body, small.subject) == ("short", "short", "Hi")  # under the caps: as is
    path = tmp_path / "long.csv"
    path.write_text("text,label\n%s,question\n" % ("word " * 12_000).strip(), encoding="utf-8")
    import_examples(db, path, read_examples(path), clean=str.strip)
    (imported_id,) = db.execute("SELECT id FROM messages WHERE source = 'import'").fetchone()
    assert len(messages.get_message(db, imported_id).clean_body) == messages.MAX_CLEAN_CHARS


def test_the_served_model_table_takes_exactly_the_kinds_a_run_can_choose(db):
    """classifier.kinds is the registry; storage keeps its own CHECK (it imports no classifier): they agree."""
    import re

    from classifier.kinds import RECORDED
    from storage import served

    schema = db.execute("SELECT sql FROM sqlite_master WHERE name = 'served_models'").fetchone()[0]
    checked = re.search(r"kind IN \(([^)]*)\)", schema).group(1)
    assert tuple(name.strip(" '") for name in checked.split(",")) == RECORDED == served.KINDS
