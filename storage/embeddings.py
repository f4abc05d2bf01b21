"""Sentence embeddings of messages: stored once per message, read back for every refit."""

from __future__ import annotations

from sqlite_utils import Database

from .db import now, write


def add_embedding(db: Database, message_id: int, model: str, vector: bytes) -> bool:
    """Store a message's vector unless it has one already. Returns True when this call stored it."""
    with write(db):
        cursor = db.execute(
            "INSERT OR IGNORE INTO embeddings (message_id, model, vector, created_at) VALUES (?, ?, ?, ?)",
            [message_id, model, vector, now()],
        )
    return cursor.rowcount == 1


def get_embedding(db: Database, message_id: int, model: str) -> bytes | None:
    rows = list(db.query("SELECT vector FROM embeddings WHERE message_id = ? AND model = ?", [message_id, model]))
    return rows[0]["vector"] if rows else None


def count_embeddings(db: Database) -> int:
    return next(db.query("SELECT COUNT(*) AS n FROM embeddings"))["n"]


def unembedded_labelled(db: Database, model: str, limit: int = 256) -> list[dict]:
    """Labelled messages (imports, say) that have no vector from `model` yet: {id, subject, clean_body}."""
    return list(
        db.query(
            """SELECT m.id, m.subject, m.clean_body FROM messages m
           JOIN current_labels c ON c.message_id = m.id
           LEFT JOIN embeddings e ON e.message_id = m.id AND e.model = ?
           WHERE e.message_id IS NULL AND m.deleted_at IS NULL AND c.excluded = 0
           ORDER BY m.id LIMIT ?""",
            [model, limit],
        )
    )


def labelled_vectors(db: Database, model: str) -> list[tuple[int, str, bytes]]:
    """(message id, current label, vector) of every labelled, kept message that has a vector."""
    return [
        (r["id"], r["label"], r["vector"])
        for r in db.query(
            """SELECT m.id, c.label, e.vector FROM messages m
           JOIN current_labels c ON c.message_id = m.id
           JOIN embeddings e ON e.message_id = m.id AND e.model = ?
           WHERE m.deleted_at IS NULL AND c.excluded = 0 ORDER BY m.id""",
            [model],
        )
    ]


def unlabelled_vectors(db: Database, model: str, limit: int) -> list[dict]:
    """The newest `limit` kept messages no one labelled (no label at all, so none excluded; nor a copy of a
    labelled one, which could be an eval row) that have a vector from `model`: {id, subject, clean_body,
    vector}, newest first. A run's adapter labels them to teach its student (classifier.student)."""
    if limit <= 0:
        return []
    return list(
        db.query(
            """SELECT m.id, m.subject, m.clean_body, e.vector FROM messages m
           JOIN embeddings e ON e.message_id = m.id AND e.model = ?
           WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.message_id = m.id)
             AND NOT EXISTS (SELECT 1 FROM messages twin JOIN labels l ON l.message_id = twin.id
                             WHERE twin.content_hash = m.content_hash)
             AND m.deleted_at IS NULL AND m.clean_body != ''
           ORDER BY m.id DESC LIMIT ?""",
            [model, limit],
        )
    )
