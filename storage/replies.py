"""Where the bot answered each message (channel and ts of its thread reply)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from .db import now, query_one, write


def claim_reply(db: Database, message_id: int, channel: str) -> bool:
    """Reserve the right to answer a message; False when it was answered (or is being answered) already."""
    with write(db):
        cursor = db.execute(
            "INSERT INTO replies (message_id, channel, ts, created_at) VALUES (?, ?, '', ?) "
            "ON CONFLICT(message_id) DO NOTHING",
            [message_id, channel, now()],
        )
    return cursor.rowcount == 1


def set_reply(db: Database, message_id: int, channel: str, ts: str) -> None:
    with write(db):
        db.execute("UPDATE replies SET channel = ?, ts = ? WHERE message_id = ?", [channel, ts, message_id])


def release_reply(db: Database, message_id: int) -> None:
    """Give the claim back after a failed post, so a redelivery can answer."""
    with write(db):
        db.execute("DELETE FROM replies WHERE message_id = ? AND ts = ''", [message_id])


def get_reply(db: Database, message_id: int) -> dict | None:
    return query_one(db, "SELECT channel, ts FROM replies WHERE message_id = ? AND ts != ''", [message_id])


def in_doubt(db: Database) -> list[dict]:
    """Claims whose post was never confirmed: a bot that stopped between claiming and recording the reply."""
    return list(db.query("SELECT message_id, channel FROM replies WHERE ts = '' ORDER BY message_id"))


def unanswered(db: Database, *, older_than_s: float, within_hours: float = 24, max_attempts: int = 3) -> list[int]:
    """Collected Slack messages with no reply and no claim, received in the window (oldest first).

    A message lands here when its answer failed after retries or the bot stopped before
    answering it; imported messages (no channel) never do. Each attempt that got as far as
    classifying left a prediction: after `max_attempts` of them the message is left alone
    (a channel the bot cannot post in would otherwise be retried all day).
    """
    stamp = lambda delta: (datetime.now(timezone.utc) - delta).isoformat(timespec="milliseconds")  # noqa: E731
    upper, lower = stamp(timedelta(seconds=older_than_s)), stamp(timedelta(hours=within_hours))
    rows = db.query(
        """SELECT m.id FROM messages m
                        WHERE m.channel IS NOT NULL AND m.ts IS NOT NULL AND m.deleted_at IS NULL
                          AND m.received_at BETWEEN ? AND ?
                          AND NOT EXISTS (SELECT 1 FROM replies r WHERE r.message_id = m.id)
                          AND (SELECT COUNT(*) FROM predictions p WHERE p.message_id = m.id) < ?
                        ORDER BY m.id""",
        [lower, upper, max_attempts],
    )
    return [r["id"] for r in rows]
