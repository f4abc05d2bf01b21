"""Predictions the classifier made, with the model that made them (and its adapter version, if any)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, query_one, write


@dataclass(frozen=True)
class Prediction:
    id: int
    message_id: int | None
    adapter_version: int | None
    label: str
    confidence: float
    needs_review: bool
    scores: dict
    latency_ms: float | None
    created_at: str
    model: str | None = None


def _prediction(row: dict) -> Prediction:
    return Prediction(**{**row, "needs_review": bool(row["needs_review"]), "scores": json.loads(row["scores"])})


def add_prediction(
    db: Database,
    *,
    message_id: int | None,
    adapter_version: int | None,
    label: str,
    confidence: float,
    needs_review: bool,
    scores: dict,
    latency_ms: float | None = None,
    model: str | None = None,
) -> Prediction:
    with write(db):
        cursor = db.execute(
            """INSERT INTO predictions (message_id, adapter_version, label, confidence, needs_review, scores,
                   latency_ms, created_at, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                message_id,
                adapter_version,
                label,
                confidence,
                int(needs_review),
                json.dumps(scores),
                latency_ms,
                now(),
                model,
            ],
        )
    return _prediction(query_one(db, "SELECT * FROM predictions WHERE id = ?", [cursor.lastrowid]))


def latest_prediction(db: Database, message_id: int) -> Prediction | None:
    row = query_one(db, "SELECT * FROM predictions WHERE message_id = ? ORDER BY id DESC LIMIT 1", [message_id])
    return _prediction(row) if row else None


def live_accuracy(db: Database) -> dict:
    """Per model that answered: how often its latest prediction for a message matched the label a person
    gave afterwards. {model: {n, confirmed, corrected, accuracy}}, the most judged model first.

    The model is the one the prediction names (`model`); rows stored before that column say only the
    adapter version, so they are named from it."""
    rows = db.query("""
        SELECT COALESCE(p.model, CASE WHEN p.adapter_version IS NULL THEN 'zero-shot'
                                      ELSE 'adapter v' || p.adapter_version END) AS model,
               COUNT(*) AS n, SUM(p.label = c.label) AS confirmed
        FROM predictions p
        JOIN current_labels c ON c.message_id = p.message_id AND c.created_at >= p.created_at
        WHERE p.id = (SELECT MAX(id) FROM predictions WHERE message_id = p.message_id)
        GROUP BY 1 ORDER BY n DESC, model""")
    return {
        r["model"]: {
            "n": r["n"],
            "confirmed": r["confirmed"],
            "corrected": r["n"] - r["confirmed"],
            "accuracy": r["confirmed"] / r["n"],
        }
        for r in rows
    }


def least_sure(db: Database, *, since: str, limit: int = 5) -> list[dict]:
    """Unlabeled, non-deleted messages received after `since`, least confident latest prediction first.

    Each row: id, channel, ts, subject ('' when none), clean_body, label and confidence.
    """
    return list(
        db.query(
            """
        SELECT m.id, m.channel, m.ts, COALESCE(m.subject, '') AS subject, m.clean_body, p.label, p.confidence
        FROM messages m JOIN predictions p ON p.id = (SELECT MAX(id) FROM predictions WHERE message_id = m.id)
        WHERE m.deleted_at IS NULL AND m.received_at > ?
          AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.message_id = m.id)
        ORDER BY p.confidence ASC LIMIT ?""",
            [since, limit],
        )
    )
