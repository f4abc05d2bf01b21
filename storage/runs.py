"""Training runs and their per-step metrics.

queued -> running -> succeeded | failed | cancelled | interrupted.
A unique index allows one running run at a time; `claim_next_run` takes the
oldest queued run in one statement, so two workers can never take the same one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlite_utils import Database

from .db import now, query, query_one, write
from .errors import NotFound, RunConflict

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class Run:
    id: int
    status: str
    requested_by: str
    params: dict
    dataset_stats: dict | None
    run_dir: str | None
    queued_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    adapter_version: int | None


@dataclass(frozen=True)
class Metric:
    kind: str
    step: int
    epoch: float | None
    train_loss: float | None
    eval_loss: float | None
    learning_rate: float | None


def _run(row: dict) -> Run:
    return Run(**{**row, "params": json.loads(row["params"] or "{}"),
                  "dataset_stats": json.loads(row["dataset_stats"]) if row["dataset_stats"] else None})


def queue_run(db: Database, *, requested_by: str, params: dict | None = None) -> Run:
    """Queue a run unless one is already queued or running (RunConflict names it)."""
    with write(db):
        active = query_one(db, "SELECT id, status FROM runs WHERE status IN ('queued', 'running') ORDER BY id")
        if active:
            raise RunConflict(f"run {active['id']} is already {active['status']}")
        cursor = db.execute("INSERT INTO runs (status, requested_by, params, queued_at) VALUES ('queued', ?, ?, ?)",
                            [requested_by, json.dumps(params or {}), now()])
    return get_run(db, cursor.lastrowid)


def get_run(db: Database, run_id: int) -> Run:
    row = query_one(db, "SELECT * FROM runs WHERE id = ?", [run_id])
    if row is None:
        raise NotFound(f"no training run {run_id}")
    return _run(row)


def finished_before(db: Database, cutoff: str) -> list[Run]:
    """Runs that finished (in any way) before the ISO timestamp `cutoff`."""
    return [_run(r) for r in db.query("SELECT * FROM runs WHERE finished_at IS NOT NULL AND finished_at < ? "
                                       "ORDER BY id", [cutoff])]


def list_runs(db: Database, limit: int = 20) -> list[Run]:
    return [_run(r) for r in query(db, "SELECT * FROM runs ORDER BY id DESC LIMIT ?", [limit])]


def active_run(db: Database) -> Run | None:
    row = query_one(db, "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY id LIMIT 1")
    return _run(row) if row else None


def claim_next_run(db: Database, *, run_dir_for) -> Run | None:
    """Move the oldest queued run to running; None when nothing is queued or one is running.

    `run_dir_for(run_id)` names the run's directory, recorded with the claim.
    """
    with write(db):
        if query_one(db, "SELECT id FROM runs WHERE status = 'running'"):
            return None
        row = query_one(db, "SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1")
        if row is None:
            return None
        db.execute("UPDATE runs SET status = 'running', started_at = ?, run_dir = ? WHERE id = ?",
                   [now(), str(run_dir_for(row["id"])), row["id"]])
    return get_run(db, row["id"])


def claim_run(db: Database, run_id: int, run_dir) -> Run | None:
    """Move this queued run to running; None when another process (a worker) claimed it first."""
    with write(db):
        if query_one(db, "SELECT id FROM runs WHERE status = 'running'"):
            return None
        cursor = db.execute("UPDATE runs SET status = 'running', started_at = ?, run_dir = ? "
                            "WHERE id = ? AND status = 'queued'", [now(), str(run_dir), run_id])
    return get_run(db, run_id) if cursor.rowcount == 1 else None


def finish_run(db: Database, run_id: int, status: str, *, error: str | None = None,
               adapter_version: int | None = None, dataset_stats: dict | None = None) -> Run:
    """End a run. Only an active run can end; ending twice is a RunConflict."""
    if status not in FINISHED:
        raise ValueError(f"status must be one of {FINISHED}, got {status!r}")
    with write(db):
        cursor = db.execute(
            """UPDATE runs SET status = ?, finished_at = ?, error = ?, adapter_version = ?,
                   dataset_stats = COALESCE(?, dataset_stats)
               WHERE id = ? AND status IN ('queued', 'running')""",
            [status, now(), error, adapter_version,
             json.dumps(dataset_stats) if dataset_stats is not None else None, run_id],
        )
        if cursor.rowcount != 1:
            raise RunConflict(f"run {run_id} is {get_run(db, run_id).status}, not active")
    return get_run(db, run_id)


def set_dataset_stats(db: Database, run_id: int, stats: dict) -> None:
    with write(db):
        db.execute("UPDATE runs SET dataset_stats = ? WHERE id = ?", [json.dumps(stats), run_id])


def add_metrics(db: Database, run_id: int, metrics: list[dict]) -> int:
    """Store metric lines (as the trainer writes them); a line seen before is ignored. Returns how many were new."""
    added = 0
    with write(db):
        for m in metrics:
            cursor = db.execute(
                """INSERT INTO run_metrics (run_id, kind, step, epoch, train_loss, eval_loss, learning_rate)
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, kind, step) DO NOTHING""",
                [run_id, m["kind"], m["step"], m.get("epoch"), m.get("train_loss"), m.get("eval_loss"),
                 m.get("learning_rate")],
            )
            added += cursor.rowcount
    return added


def run_metrics(db: Database, run_id: int) -> list[Metric]:
    return [Metric(**r) for r in query(
        db, "SELECT kind, step, epoch, train_loss, eval_loss, learning_rate FROM run_metrics "
            "WHERE run_id = ? ORDER BY step, kind", [run_id])]
