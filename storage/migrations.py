"""The schema, only as numbered migrations. Never edit an applied one: add the next.

Applied migrations are recorded in `_sqlite_migrations` (sqlite-utils' table)
and pending ones run when the database is opened (`storage.db.open_db`).
"""

import sqlite3

from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("supportbot")


def _run_script(db, script: str) -> None:
    """Run SQL statements one by one, inside the migration's transaction.

    (`executescript` would COMMIT first and break the migration's atomicity.)
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement[:80]!r}")


@MIGRATIONS(name="m001_initial")
def m001_initial(db):
    _run_script(
        db,
        """
        -- Every message the bot has seen: Slack messages, forwarded emails, imports.
        -- external_id makes redelivery idempotent: slack:<channel>:<ts> or
        -- import:<file hash>:<line>.
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL CHECK (source IN ('slack_message', 'email', 'import')),
            external_id TEXT NOT NULL UNIQUE,
            team TEXT,
            channel TEXT,
            ts TEXT,
            thread_ts TEXT,
            event_id TEXT,
            sender TEXT,
            subject TEXT,
            raw_body TEXT NOT NULL,
            clean_body TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            received_at TEXT NOT NULL,
            edited_at TEXT,
            deleted_at TEXT
        );
        CREATE INDEX messages_channel_ts ON messages(channel, ts);
        CREATE INDEX messages_content_hash ON messages(content_hash);

        -- The team's labels. Deactivated labels stay for history.
        CREATE TABLE label_set (
            name TEXT PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL
        );

        -- Append-only label history; a message's current label is its latest row.
        CREATE TABLE labels (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id),
            label TEXT NOT NULL REFERENCES label_set(name),
            labeled_by TEXT NOT NULL,
            method TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX labels_message ON labels(message_id, id);
        CREATE TRIGGER labels_append_only_update BEFORE UPDATE ON labels
            BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
        CREATE TRIGGER labels_append_only_delete BEFORE DELETE ON labels
            BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
        CREATE VIEW current_labels AS
            SELECT l.* FROM labels l
            WHERE l.id = (SELECT MAX(id) FROM labels WHERE message_id = l.message_id);

        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            message_id INTEGER REFERENCES messages(id),
            adapter_version INTEGER,
            label TEXT NOT NULL,
            confidence REAL NOT NULL,
            needs_review INTEGER NOT NULL,
            scores TEXT NOT NULL,
            latency_ms REAL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX predictions_message ON predictions(message_id, id);

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN
                ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
            requested_by TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            dataset_stats TEXT,
            run_dir TEXT,
            queued_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            error TEXT,
            adapter_version INTEGER
        );
        -- At most one run is running at a time, whatever process asks.
        CREATE UNIQUE INDEX runs_one_running ON runs(status) WHERE status = 'running';

        CREATE TABLE run_metrics (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            kind TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
            step INTEGER NOT NULL,
            epoch REAL,
            train_loss REAL,
            eval_loss REAL,
            learning_rate REAL,
            UNIQUE (run_id, kind, step)
        );

        CREATE TABLE adapters (
            version INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id),
            path TEXT NOT NULL,
            base_model TEXT NOT NULL,
            labels TEXT NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            is_current INTEGER NOT NULL DEFAULT 0
        );
        -- Exactly one adapter can be current; switching is one transaction.
        CREATE UNIQUE INDEX adapters_one_current ON adapters(is_current) WHERE is_current = 1;
        """,
    )


@MIGRATIONS(name="m002_replies")
def m002_replies(db):
    _run_script(
        db,
        """
        -- The bot's thread reply to each message, so corrections can update it in place.
        CREATE TABLE replies (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id),
            channel TEXT NOT NULL,
            ts TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    )


@MIGRATIONS(name="m003_outbox")
def m003_outbox(db):
    _run_script(
        db,
        """
        -- Messages for Slack, delivered by the bot's relay: retried on 429/5xx, never lost, never twice.
        -- key is unique: a progress message is one row updated in place; a report is one row.
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('message', 'file')),
            channel TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            version INTEGER NOT NULL DEFAULT 1,
            next_attempt_at TEXT NOT NULL,
            ts TEXT,
            after_key TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT
        );
        CREATE INDEX outbox_due ON outbox(status, next_attempt_at);
        """,
    )


@MIGRATIONS(name="m004_label_exclusion")
def m004_label_exclusion(db):
    # A label event can also say "leave this message out of training" (a data-check decision),
    # so exclusion has the same history (who, when, how) as every other label.
    db.execute("ALTER TABLE labels ADD COLUMN excluded INTEGER NOT NULL DEFAULT 0")


@MIGRATIONS(name="m005_embeddings_and_served_models")
def m005_embeddings_and_served_models(db):
    _run_script(
        db,
        """
        -- One sentence embedding per message, computed once at intake (refits never re-encode).
        CREATE TABLE embeddings (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id),
            model TEXT NOT NULL,
            vector BLOB NOT NULL,
            created_at TEXT NOT NULL
        );
        -- Which model answers: the newest row. Appended by the serving gate after a run, and by a rollback.
        CREATE TABLE served_models (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('embeddings', 'adapter', 'ensemble')),
            adapter_version INTEGER REFERENCES adapters(version),
            details TEXT NOT NULL DEFAULT '{}',
            reason TEXT NOT NULL,
            run_id INTEGER,
            chosen_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            CHECK ((kind = 'embeddings') = (adapter_version IS NULL))
        );
        -- The serving model watches the newest deletion (storage.labels.change_signature) at every answer.
        CREATE INDEX messages_deleted_at ON messages(deleted_at);
        -- What answered ("embeddings", "adapter v3 + embeddings"...), beside the adapter version.
        ALTER TABLE predictions ADD COLUMN model TEXT;
        """,
    )


@MIGRATIONS(name="m006_edits_in_the_label_signature")
def m006_edits_in_the_label_signature(db):
    # The serving model watches the newest edit too (storage.labels.change_signature): an edited
    # labelled message is embedded again and the embedding classifier refitted on its new text.
    db.execute("CREATE INDEX messages_edited_at ON messages(edited_at)")


@MIGRATIONS(name="m007_run_leases")
def m007_run_leases(db):
    _run_script(
        db,
        """
        -- A running run is leased to the process executing it (storage.runs): it renews the lease as it follows
        -- the run, another worker recovers the run only once the lease has expired, and a run finishes (and
        -- registers its adapter) only while its worker still holds it. Rows from before have no lease.
        ALTER TABLE runs ADD COLUMN worker_id TEXT;
        ALTER TABLE runs ADD COLUMN heartbeat_at TEXT;
        ALTER TABLE runs ADD COLUMN lease_until TEXT;
        """,
    )


@MIGRATIONS(name="m008_adapter_checksum")
def m008_adapter_checksum(db):
    # sha256 of an adapter's files when it was registered (storage.adapters.folder_checksum): the bot checks
    # it before serving the adapter. NULL for adapters registered before it existed.
    db.execute("ALTER TABLE adapters ADD COLUMN checksum TEXT")


@MIGRATIONS(name="m009_distilled_served_kind")
def m009_distilled_served_kind(db):
    # The gate can choose the adapter mixed with its student (classifier.student). SQLite cannot change a
    # CHECK constraint in place: the table is rebuilt with the same columns and rows.
    _run_script(
        db,
        """
        CREATE TABLE served_models_new (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('embeddings', 'adapter', 'ensemble', 'distilled')),
            adapter_version INTEGER REFERENCES adapters(version),
            details TEXT NOT NULL DEFAULT '{}',
            reason TEXT NOT NULL,
            run_id INTEGER,
            chosen_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            CHECK ((kind = 'embeddings') = (adapter_version IS NULL))
        );
        INSERT INTO served_models_new (id, kind, adapter_version, details, reason, run_id, chosen_by, created_at)
            SELECT id, kind, adapter_version, details, reason, run_id, chosen_by, created_at FROM served_models;
        DROP TABLE served_models;
        ALTER TABLE served_models_new RENAME TO served_models;
        """,
    )
