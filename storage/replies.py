"""Where the bot answered each message (channel and ts of its thread reply)."""

from __future__ import annotations

from sqlite_utils import Database

from .db import now, query_one, write


def claim_reply(db: Database, message_id: int, channel: str) -> bool:
    """Reserve the right to answer a message; False when it was answered (or is being answered) already."""
    with write(db):
        cursor = db.execute("INSERT INTO replies (message_id, channel, ts, created_at) VALUES (?, ?, '', ?) "
                            "ON CONFLICT(message_id) DO NOTHING", [message_id, channel, now()])
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


def message_for_reply(db: Database, channel: str, ts: str) -> int | None:
    row = query_one(db, "SELECT message_id FROM replies WHERE channel = ? AND ts = ?", [channel, ts])
    return row["message_id"] if row else None
