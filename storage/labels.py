"""The label set and the append-only label history.

A message's current label is its latest human label. Nothing here updates or
deletes a label row (triggers enforce it): a correction is a new row.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, query_one, write
from .errors import InvalidLabelName, NotFound, UnknownLabel
from .messages import count_messages, get_message

METHODS = ("slash_command", "button", "shortcut", "import", "datacheck", "cli")
# One word, so `/label NAME` can name it, safe wherever it is shown (Slack, prompts, pictures, CSV cells):
# ASCII letters and digits, then also `_ - . ? !`; at most 64 characters. Nothing that means something in
# Slack's mrkdwn (`<>&*~` and backticks), to matplotlib ($ and backslash) or to a spreadsheet (a leading = + - @).
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.?!-]{0,63}")
LABEL_NAME_RULE = "1-64 characters: letters a-z, digits, '_', '-', '.', '?' or '!', starting with a letter or digit"
MAX_DESCRIPTION_CHARS = 300
# Active labels at most: every label must fit one Slack picker (a static select holds 100 options).
MAX_ACTIVE_LABELS = 100


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
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise InvalidLabelName(f"invalid label name {ascii(shown)}: use {LABEL_NAME_RULE}")
    return name


def check_description(description: str) -> str:
    """A description on one line (whitespace runs become one space), without control or format characters."""
    text = " ".join((description or "").split())
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise InvalidLabelName(
            f"a description can have at most {MAX_DESCRIPTION_CHARS} characters (this one has {len(text)})"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") for ch in text):
        raise InvalidLabelName("a description cannot contain control or invisible formatting characters")
    return text


def check_room(db: Database, new: int) -> None:
    """Refuse to go over MAX_ACTIVE_LABELS active labels."""
    active = db.execute("SELECT COUNT(*) FROM label_set WHERE active = 1").fetchone()[0]
    if new and active + new > MAX_ACTIVE_LABELS:
        raise InvalidLabelName(
            f"{active} labels are active and at most {MAX_ACTIVE_LABELS} can be "
            f"(one Slack picker); retire some first (adding {new} would make {active + new})"
        )


def add_label_def(db: Database, name: str, description: str = "") -> LabelDef:
    """Add a label to the set (or reactivate it, updating a non-empty description)."""
    check_label_name(name)
    description = check_description(description)
    with write(db):
        known = query_one(db, "SELECT active FROM label_set WHERE name = ?", [name])
        check_room(db, 0 if known and known["active"] else 1)
        db.execute(
            """INSERT INTO label_set (name, description, active, created_at) VALUES (?, ?, 1, ?)
               ON CONFLICT(name) DO UPDATE SET active = 1,
                   description = CASE WHEN excluded.description != '' THEN excluded.description
                                      ELSE label_set.description END""",
            [name, description, now()],
        )
    return get_label_def(db, name)


def describe_label(db: Database, name: str, description: str) -> LabelDef:
    """Replace an active label's description (the model reads it in its prompt)."""
    description = check_description(description)
    name = resolve_label(db, name)
    with write(db):
        db.execute("UPDATE label_set SET description = ? WHERE name = ?", [description, name])
    return get_label_def(db, name)


def retire_label(db: Database, name: str) -> LabelDef:
    """Retire an active label: no longer offered or trained on; its history stays (add it again to bring it back)."""
    name = resolve_label(db, name)
    with write(db):
        db.execute("UPDATE label_set SET active = 0 WHERE name = ?", [name])
    return get_label_def(db, name)


def get_label_def(db: Database, name: str) -> LabelDef:
    row = query_one(db, "SELECT * FROM label_set WHERE name = ?", [name])
    if row is None:
        raise NotFound(f"no label named {name!r}")
    return LabelDef(**{**row, "active": bool(row["active"])})


def list_label_defs(db: Database, *, active_only: bool = True) -> list[LabelDef]:
    where = " WHERE active = 1" if active_only else ""
    return [
        LabelDef(**{**r, "active": bool(r["active"])})
        for r in db.query("SELECT * FROM label_set" + where + " ORDER BY name")
    ]


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


def add_label(db: Database, message_id: int, label: str, *, by: str, method: str, excluded: bool = False) -> LabelEvent:
    """Record a human label for a message (`excluded`: and leave it out of training). `label` must be active."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    get_message(db, message_id)
    name = resolve_label(db, label)
    with write(db):
        latest = query_one(db, "SELECT * FROM current_labels WHERE message_id = ?", [message_id])
        if latest and (latest["label"], latest["labeled_by"], bool(latest["excluded"])) == (name, by, excluded):
            return _event(latest)  # the same person saying the same thing again is not a new label
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
    """Every non-deleted, non-excluded message whose current label is active, in id order: the training data."""
    rows = db.query("""SELECT m.id, m.subject, m.clean_body, c.label, c.labeled_by FROM messages m
            JOIN current_labels c ON c.message_id = m.id JOIN label_set s ON s.name = c.label AND s.active = 1
            WHERE m.deleted_at IS NULL AND c.excluded = 0 ORDER BY m.id""")
    return [LabeledMessage(r["id"], r["subject"], r["clean_body"], r["label"], r["labeled_by"]) for r in rows]


def label_counts(db: Database) -> dict[str, int]:
    """Current-label counts of non-deleted messages for every active label (zeros included)."""
    active = {d.name for d in list_label_defs(db)}
    counts = dict.fromkeys(active, 0)
    for r in db.query("""SELECT c.label, COUNT(*) AS n FROM current_labels c
            JOIN messages m ON m.id = c.message_id WHERE m.deleted_at IS NULL AND c.excluded = 0
            GROUP BY c.label"""):
        counts[r["label"]] = r["n"]
    return {name: n for name, n in sorted(counts.items()) if name in active}


def new_human_labels(db: Database, since: str) -> int:
    """Messages given a human label (not an import) after `since`: each message counts once,
    however often it was clicked."""
    return db.execute(
        "SELECT COUNT(DISTINCT message_id) FROM labels WHERE method != 'import' AND created_at > ?", [since]
    ).fetchone()[0]


def stats(db: Database) -> dict:
    """{"messages": N, "labeled": N, "labels": {name: count}}: what `/stats` and `supportbot stats` show."""
    counts = label_counts(db)
    return {"messages": count_messages(db), "labeled": sum(counts.values()), "labels": counts}


def change_signature(db: Database) -> tuple:
    """A value that changes whenever a label, the label set, a message's deletion or a message's text (an edit)
    changes (cheap to read): the serving model refits its embedding classifier when it moves."""
    # Read on every classification, so only indexed lookups: labels are append-only (the newest id moves on
    # every change), and the newest deletion and edit times move on every deletion and edit.
    row = next(
        db.query("""SELECT (SELECT MAX(id) FROM labels) AS last,
                                  (SELECT group_concat(name) FROM label_set WHERE active = 1) AS defs,
                                  (SELECT MAX(deleted_at) FROM messages) AS deleted,
                                  (SELECT MAX(edited_at) FROM messages) AS edited""")
    )
    return tuple(row.values())


def training_examples(db) -> list[dict]:
    """The labeled messages as the trainer and the data check read them (subject apart, as serving passes it)."""
    return [
        {"id": m.message_id, "text": m.text, "subject": m.subject, "label": m.label, "labeled_by": m.labeled_by}
        for m in labeled_messages(db)
    ]
