"""Messages: what the bot has seen. Redelivery of the same Slack message stores it once."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, query_one, write
from .errors import NotFound

SOURCES = ("slack_message", "email", "import")

# What one message may take (a 41 MB email body once took the bot from 122 MB to 6.7 GB). Longer text is
# cut when stored: the raw body with a note saying where and how long it was, the cleaned text and the
# subject without one (models read them, and would read the note as the customer's words).
MAX_RAW_CHARS = 200_000  # the raw body kept; cleaning reads no more either (trainer.text.MAX_PARSE_CHARS)
MAX_CLEAN_CHARS = 20_000  # the cleaned text people see and models read (a prompt takes 1,500 characters of it)
MAX_SUBJECT_CHARS = 1_000


@dataclass(frozen=True)
class Message:
    id: int
    source: str
    external_id: str
    team: str | None
    channel: str | None
    ts: str | None
    thread_ts: str | None
    event_id: str | None
    sender: str | None
    subject: str | None
    raw_body: str
    clean_body: str
    content_hash: str
    received_at: str
    edited_at: str | None
    deleted_at: str | None

    @property
    def text(self) -> str:
        """What a classifier reads: subject and cleaned body."""
        return f"{self.subject}\n\n{self.clean_body}" if self.subject else self.clean_body


def content_hash(subject: str | None, clean_body: str) -> str:
    """Hash of the normalized text, so exact duplicates can be found whatever their whitespace or case."""
    normalized = re.sub(r"\s+", " ", f"{subject or ''} {clean_body}").strip().lower()
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def cut_note(total: int) -> str:
    """What ends a raw body that was cut at MAX_RAW_CHARS."""
    return f"\n\n[cut by supportbot: only the first {MAX_RAW_CHARS:,} of {total:,} characters are kept]"


def capped(raw_body: str, clean_body: str, subject: str | None) -> tuple[str, str, str | None]:
    """(raw, clean, subject) cut to the stored sizes."""
    if len(raw_body) > MAX_RAW_CHARS:
        raw_body = raw_body[:MAX_RAW_CHARS] + cut_note(len(raw_body))
    return raw_body, clean_body[:MAX_CLEAN_CHARS], None if subject is None else subject[:MAX_SUBJECT_CHARS]


def slack_external_id(channel: str, ts: str) -> str:
    return f"slack:{channel}:{ts}"


def add_message(
    db: Database,
    *,
    source: str,
    external_id: str,
    raw_body: str,
    clean_body: str | None = None,
    subject: str | None = None,
    sender: str | None = None,
    team: str | None = None,
    channel: str | None = None,
    ts: str | None = None,
    thread_ts: str | None = None,
    event_id: str | None = None,
) -> tuple[Message, bool]:
    """Store a message once per `external_id`. Returns (message, created)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    clean = clean_body if clean_body is not None else re.sub(r"\s+", " ", raw_body[:MAX_RAW_CHARS]).strip()
    raw_body, clean, subject = capped(raw_body, clean, subject)
    with write(db):
        cursor = db.execute(
            """INSERT INTO messages (source, external_id, team, channel, ts, thread_ts, event_id,
                   sender, subject, raw_body, clean_body, content_hash, received_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(external_id) DO NOTHING""",
            [
                source,
                external_id,
                team,
                channel,
                ts,
                thread_ts,
                event_id,
                sender,
                subject,
                raw_body,
                clean,
                content_hash(subject, clean),
                now(),
            ],
        )
        created = cursor.rowcount == 1
        row = query_one(db, "SELECT * FROM messages WHERE external_id = ?", [external_id])
    return Message(**row), created


def get_message(db: Database, message_id: int) -> Message:
    row = query_one(db, "SELECT * FROM messages WHERE id = ?", [message_id])
    if row is None:
        raise NotFound(f"no message with id {message_id}")
    return Message(**row)


def find_message(db: Database, external_id: str) -> Message | None:
    row = query_one(db, "SELECT * FROM messages WHERE external_id = ?", [external_id])
    return Message(**row) if row else None


def edit_message(db: Database, message_id: int, *, raw_body: str, clean_body: str | None = None) -> Message:
    """Replace a message's text (a Slack edit). Its labels stay; its stored vector, made from the old text,
    goes in the same transaction (it is embedded again when next needed)."""
    message = get_message(db, message_id)
    clean = clean_body if clean_body is not None else re.sub(r"\s+", " ", raw_body[:MAX_RAW_CHARS]).strip()
    raw_body, clean, _ = capped(raw_body, clean, None)
    with write(db):
        db.execute(
            "UPDATE messages SET raw_body = ?, clean_body = ?, content_hash = ?, edited_at = ? WHERE id = ?",
            [raw_body, clean, content_hash(message.subject, clean), now(), message_id],
        )
        if clean != message.clean_body:
            db.execute("DELETE FROM embeddings WHERE message_id = ?", [message_id])
    return get_message(db, message_id)


def mark_deleted(db: Database, message_id: int) -> Message:
    """Mark a message deleted (in Slack). Never removes it or its labels."""
    get_message(db, message_id)
    with write(db):
        db.execute("UPDATE messages SET deleted_at = COALESCE(deleted_at, ?) WHERE id = ?", [now(), message_id])
    return get_message(db, message_id)


def count_messages(db: Database, *, include_deleted: bool = False) -> int:
    where = "" if include_deleted else " WHERE deleted_at IS NULL"
    return db.execute("SELECT COUNT(*) FROM messages" + where).fetchone()[0]


def latest_unlabeled(db: Database, channel: str) -> Message | None:
    """The newest non-deleted message in `channel` that has no label yet (what a bare `/label` labels)."""
    row = query_one(
        db,
        """SELECT * FROM messages m WHERE channel = ? AND deleted_at IS NULL
                           AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.message_id = m.id)
                           ORDER BY ts DESC LIMIT 1""",
        [channel],
    )
    return Message(**row) if row else None
