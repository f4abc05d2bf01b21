"""The label set and the append-only label history.

A message's current label is its latest human label. Nothing here updates or
deletes a label row (triggers enforce it): a correction is a new row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, query_one, write
from .errors import InvalidLabelName, NotFound, UnknownLabel
from .messages import count_messages, get_message

METHODS = ("slash_command", "button", "shortcut", "import", "datacheck", "cli")
# One word, so `/label NAME` can name it: visible characters, no spaces.
LABEL_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True)
class LabelDef:
    name: str
    description: str
    active: bool
    created_at: str


@dataclass(frozen=True)
class LabelEvent:
    id: int
    message_id: int
    label: str
    labeled_by: str
    method: str
    created_at: str
    excluded: bool = False  # this event leaves the message out of training


def check_label_name(name: str) -> str:
    if not LABEL_NAME.fullmatch(name or ""):
        raise InvalidLabelName(
            f"invalid label name {name!r}: use 1-64 visible characters without spaces"
        )
    return name


def add_label_def(db: Database, name: str, description: str = "") -> LabelDef:
    """Add a label to the set (or reactivate it, updating a non-empty description)."""
    check_label_name(name)
    with write(db):
        db.execute(
            """INSERT INTO label_set (name, description, active, created_at) VALUES (?, ?, 1, ?)
               ON CONFLICT(name) DO UPDATE SET active = 1,
                   description = CASE WHEN excluded.description != '' THEN excluded.description
                                      ELSE label_set.description END""",
            [name, description, now()],
        )
    return get_label_def(db, name)


def get_label_def(db: Database, name: str) -> LabelDef:
    row = query_one(db, "SELECT * FROM label_set WHERE name = ?", [name])
    if row is None:
        raise NotFound(f"no label named {name!r}")
    return LabelDef(**{**row, "active": bool(row["active"])})


def list_label_defs(db: Database, *, active_only: bool = True) -> list[LabelDef]:
    where = " WHERE active = 1" if active_only else ""
    return [LabelDef(**{**r, "active": bool(r["active"])})
            for r in db.query("SELECT * FROM label_set" + where + " ORDER BY name")]


def resolve_label(db: Database, name: str) -> str:
    """The active label `name` refers to, matched case-insensitively; else UnknownLabel."""
    active = [d.name for d in list_label_defs(db)]
    for candidate in active:
        if candidate == name:
            return candidate
    folded = [c for c in active if c.lower() == (name or "").lower()]
    if len(folded) == 1:
        return folded[0]
    raise UnknownLabel(name, active)


def add_label(db: Database, message_id: int, label: str, *, by: str, method: str,
              excluded: bool = False) -> LabelEvent:
    """Record a human label for a message (`excluded`: and leave it out of training). `label` must be active."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    get_message(db, message_id)
    name = resolve_label(db, label)
    with write(db):
        cursor = db.execute(
            "INSERT INTO labels (message_id, label, labeled_by, method, created_at, excluded) VALUES (?, ?, ?, ?, ?, ?)",
            [message_id, name, by, method, now(), int(excluded)],
        )
        row = query_one(db, "SELECT * FROM labels WHERE id = ?", [cursor.lastrowid])
    return _event(row)


def _event(row: dict) -> LabelEvent:
    return LabelEvent(**{**row, "excluded": bool(row.get("excluded", 0))})


def current_label(db: Database, message_id: int) -> LabelEvent | None:
    row = query_one(db, "SELECT * FROM current_labels WHERE message_id = ?", [message_id])
    return _event(row) if row else None


def label_history(db: Database, message_id: int) -> list[LabelEvent]:
    return [_event(r) for r in db.query("SELECT * FROM labels WHERE message_id = ? ORDER BY id", [message_id])]


@dataclass(frozen=True)
class LabeledMessage:
    message_id: int
    subject: str | None
    text: str
    label: str
    labeled_by: str = ""


def labeled_messages(db: Database) -> list[LabeledMessage]:
    """Every non-deleted, non-excluded message with its current label, in id order: the training data."""
    rows = db.query("""SELECT m.id, m.subject, m.clean_body, c.label, c.labeled_by FROM messages m
            JOIN current_labels c ON c.message_id = m.id
            WHERE m.deleted_at IS NULL AND c.excluded = 0 ORDER BY m.id""")
    return [LabeledMessage(r["id"], r["subject"], r["clean_body"], r["label"], r["labeled_by"]) for r in rows]


def label_counts(db: Database) -> dict[str, int]:
    """Current-label counts of non-deleted messages for every active label (zeros included)."""
    counts = {d.name: 0 for d in list_label_defs(db)}
    for r in db.query("""SELECT c.label, COUNT(*) AS n FROM current_labels c
            JOIN messages m ON m.id = c.message_id WHERE m.deleted_at IS NULL AND c.excluded = 0
            GROUP BY c.label"""):
        counts[r["label"]] = r["n"]
    return dict(sorted(counts.items()))


def human_labels_since(db: Database, since: str) -> int:
    """Labels people gave (anything but an import) after the timestamp `since` ('' for all of them)."""
    return db.execute("SELECT COUNT(*) FROM labels WHERE method != 'import' AND created_at > ?", [since]).fetchone()[0]


def stats(db: Database) -> dict:
    """{"messages": N, "labeled": N, "labels": {name: count}}: what `/stats` and `supportbot stats` show."""
    counts = label_counts(db)
    return {"messages": count_messages(db), "labeled": sum(counts.values()), "labels": counts}
