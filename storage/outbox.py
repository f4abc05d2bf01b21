"""The outbox: what the bot must say in Slack, stored first and delivered by the relay.

A row is keyed (`run:7:report`); putting a row with a key that exists replaces
its payload and makes it due again, which is how a progress message is
updated in place. `ts` remembers the Slack message a row became, so later
versions update it instead of posting anew. `after_key` holds a row back until
another is sent (a report's picture goes after the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from .db import now, query_one, write


@dataclass(frozen=True)
class OutboxItem:
    id: int
    key: str
    kind: str
    channel: str
    payload: dict
    status: str
    attempts: int
    version: int
    next_attempt_at: str
    ts: str | None
    after_key: str | None
    error: str | None
    created_at: str
    sent_at: str | None


def _item(row: dict) -> OutboxItem:
    return OutboxItem(**{**row, "payload": json.loads(row["payload"])})


def put(
    db: Database, key: str, channel: str, payload: dict, *, kind: str = "message", after_key: str | None = None
) -> OutboxItem:
    """Queue (or replace, keeping its Slack ts) the message under `key`."""
    with write(db):
        db.execute(
            """INSERT INTO outbox (key, kind, channel, payload, status, next_attempt_at, after_key, created_at)
               VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)
               ON CONFLICT(key) DO UPDATE SET payload = excluded.payload, attempts = 0, error = NULL,
                   version = outbox.version + 1, next_attempt_at = excluded.next_attempt_at,
                   status = CASE WHEN outbox.status = 'sending' THEN 'sending' ELSE 'pending' END""",
            [key, kind, channel, json.dumps(payload), now(), after_key, now()],
        )
    return get(db, key)


def find_sent(db: Database, channel: str, ts: str) -> OutboxItem | None:
    """The outbox row that became the Slack message `ts` in `channel`, if any."""
    row = query_one(db, "SELECT * FROM outbox WHERE channel = ? AND ts = ? ORDER BY id DESC LIMIT 1", [channel, ts])
    return _item(row) if row else None


def get(db: Database, key: str) -> OutboxItem | None:
    row = query_one(db, "SELECT * FROM outbox WHERE key = ?", [key])
    return _item(row) if row else None


def claim_due(db: Database, limit: int = 20) -> list[OutboxItem]:
    """Mark due rows 'sending' and return them (oldest first); rows waiting on an unsent row stay."""
    with write(db):
        rows = list(
            db.query(
                """
            SELECT o.* FROM outbox o
            WHERE o.status = 'pending' AND o.next_attempt_at <= ?
              AND (o.after_key IS NULL OR EXISTS (SELECT 1 FROM outbox a WHERE a.key = o.after_key
                                                  AND a.status = 'sent'))
            ORDER BY o.id LIMIT ?""",
                [now(), limit],
            )
        )
        for row in rows:
            db.execute("UPDATE outbox SET status = 'sending', attempts = attempts + 1 WHERE id = ?", [row["id"]])
    return [_item({**r, "status": "sending", "attempts": r["attempts"] + 1}) for r in rows]


def in_doubt(db: Database) -> list[OutboxItem]:
    """Rows left 'sending' by a relay that stopped mid-call: delivered or not, nobody knows yet."""
    return [_item(r) for r in db.query("SELECT * FROM outbox WHERE status = 'sending' ORDER BY id")]


def mark_sent(db: Database, item: OutboxItem, ts: str | None) -> None:
    """Record a delivery; a newer payload put while this one was in flight stays due (progress moves on)."""
    with write(db):
        db.execute(
            """UPDATE outbox SET status = CASE WHEN version = ? THEN 'sent' ELSE 'pending' END,
                          ts = COALESCE(?, ts), sent_at = ?, error = NULL WHERE id = ?""",
            [item.version, ts, now(), item.id],
        )


def retry_later(db: Database, item_id: int, delay_s: float, error: str) -> None:
    due = (datetime.now(timezone.utc) + timedelta(seconds=delay_s)).isoformat(timespec="milliseconds")
    with write(db):
        db.execute(
            "UPDATE outbox SET status = 'pending', next_attempt_at = ?, error = ? WHERE id = ?",
            [due, error[:500], item_id],
        )


def give_up(db: Database, item_id: int, error: str) -> None:
    with write(db):
        db.execute("UPDATE outbox SET status = 'failed', error = ? WHERE id = ?", [error[:500], item_id])


def pending_count(db: Database) -> int:
    return db.execute("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0]
