"""Which model answers the team's messages: a history of choices, the newest one current.

The serving gate appends a row after each run (`embeddings`, `adapter`, `ensemble` or `distilled`, with the
adapter version and the mix where they apply); so does a rollback. Before any row, the bot
serves the current adapter if one exists, else the embeddings once there are labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, write
from .errors import NotFound

KINDS = ("embeddings", "adapter", "ensemble", "distilled")


@dataclass(frozen=True)
class Served:
    id: int
    kind: str
    adapter_version: int | None
    details: dict
    reason: str
    run_id: int | None
    chosen_by: str
    created_at: str


def _served(row: dict) -> Served:
    return Served(**{**row, "details": json.loads(row["details"])})


def set_served(
    db: Database,
    kind: str,
    *,
    reason: str,
    chosen_by: str,
    adapter_version: int | None = None,
    details: dict | None = None,
    run_id: int | None = None,
) -> Served:
    """Make `kind` (with `adapter_version` unless embeddings) the served model from now on."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (kind == "embeddings") != (adapter_version is None):
        raise ValueError("an adapter version goes with kinds adapter, ensemble and distilled, and only with them")
    if adapter_version is not None and not any(db.query("SELECT 1 FROM adapters WHERE version = ?", [adapter_version])):
        raise NotFound(f"no adapter version {adapter_version}")
    with write(db):
        cursor = db.execute(
            """INSERT INTO served_models (kind, adapter_version, details, reason, run_id, chosen_by, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [kind, adapter_version, json.dumps(details or {}), reason, run_id, chosen_by, now()],
        )
    return _served(next(db.query("SELECT * FROM served_models WHERE id = ?", [cursor.lastrowid])))


def current_served(db: Database) -> Served | None:
    rows = list(db.query("SELECT * FROM served_models ORDER BY id DESC LIMIT 1"))
    return _served(rows[0]) if rows else None


def served_history(db: Database, limit: int = 20) -> list[Served]:
    return [_served(r) for r in db.query("SELECT * FROM served_models ORDER BY id DESC LIMIT ?", [limit])]
