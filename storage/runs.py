"""Training runs and their per-step metrics.

queued -> running -> succeeded | failed | cancelled | interrupted.
A unique index allows one running run at a time; `claim_next_run` takes the
oldest queued run in one statement, so two workers can never take the same one.

A running run is leased to the process that claimed it (`worker_id`, `lease_until`): the holder
renews the lease while it follows the run (`renew_lease`), another worker settles the run as dead
only once its lease has expired (`interrupt_expired`), and the holder can finish it only while it
still holds it (`finish_run(worker_id=...)`, else LeaseLost): so a run taken over registers nothing.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from .db import now, query_one, write
from .errors import LeaseLost, NotFound, RunConflict

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
DEFAULT_LEASE_S = 60  # SUPPORTBOT_RUN_LEASE_S: how long a claim stays valid without being renewed


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
    worker_id: str | None = None  # who holds the run while it is running (None: claimed before leases)
    heartbeat_at: str | None = None  # when the holder last renewed its lease
    lease_until: str | None = None  # after this, another worker may settle the run as dead


@dataclass(frozen=True)
class Metric:
    kind: str
    step: int
    epoch: float | None
    train_loss: float | None
    eval_loss: float | None
    learning_rate: float | None


def _run(row: dict) -> Run:
    return Run(
        **{
            **row,
            "params": json.loads(row["params"] or "{}"),
            "dataset_stats": json.loads(row["dataset_stats"]) if row["dataset_stats"] else None,
        }
    )


def queue_run(db: Database, *, requested_by: str, params: dict | None = None) -> Run:
    """Queue a run unless one is already queued or running (RunConflict names it)."""
    with write(db):
        active = query_one(db, "SELECT id, status FROM runs WHERE status IN ('queued', 'running') ORDER BY id")
        if active:
            raise RunConflict(f"run {active['id']} is already {active['status']}")
        cursor = db.execute(
            "INSERT INTO runs (status, requested_by, params, queued_at) VALUES ('queued', ?, ?, ?)",
            [requested_by, json.dumps(params or {}), now()],
        )
    return get_run(db, cursor.lastrowid)


def get_run(db: Database, run_id: int) -> Run:
    row = query_one(db, "SELECT * FROM runs WHERE id = ?", [run_id])
    if row is None:
        raise NotFound(f"no training run {run_id}")
    return _run(row)


def finished_before(db: Database, cutoff: str) -> list[Run]:
    """Runs that finished (in any way) before the ISO timestamp `cutoff`."""
    return [
        _run(r)
        for r in db.query("SELECT * FROM runs WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY id", [cutoff])
    ]


def list_runs(db: Database, limit: int = 20) -> list[Run]:
    return [_run(r) for r in db.query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", [limit])]


def active_run(db: Database) -> Run | None:
    row = query_one(db, "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY id LIMIT 1")
    return _run(row) if row else None


def _lease_end(lease_s: float) -> str:
    """The timestamp `lease_s` from now, in the format of `now()` (so the two compare as strings)."""
    return (datetime.now(timezone.utc) + timedelta(seconds=lease_s)).isoformat(timespec="milliseconds")


def _claim(db: Database, run_id: int, run_dir, worker_id: str | None, lease_s: float) -> bool:
    """Inside a write: move this queued run to running, leased to `worker_id` (a fresh id when None)."""
    cursor = db.execute(
        "UPDATE runs SET status = 'running', started_at = ?, run_dir = ?, worker_id = ?, "
        "heartbeat_at = ?, lease_until = ? WHERE id = ? AND status = 'queued'",
        [now(), str(run_dir), worker_id or f"unnamed-{secrets.token_hex(6)}", now(), _lease_end(lease_s), run_id],
    )
    return cursor.rowcount == 1


def claim_next_run(
    db: Database, *, run_dir_for, worker_id: str | None = None, lease_s: float = DEFAULT_LEASE_S
) -> Run | None:
    """Move the oldest queued run to running, leased to `worker_id`; None when nothing is queued or one is running.

    `run_dir_for(run_id)` names the run's directory, recorded with the claim.
    """
    with write(db):
        if query_one(db, "SELECT id FROM runs WHERE status = 'running'"):
            return None
        row = query_one(db, "SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1")
        if row is None:
            return None
        _claim(db, row["id"], run_dir_for(row["id"]), worker_id, lease_s)
    return get_run(db, row["id"])


def claim_run(
    db: Database, run_id: int, run_dir, *, worker_id: str | None = None, lease_s: float = DEFAULT_LEASE_S
) -> Run | None:
    """Move this queued run to running, leased to `worker_id`; None when another process (a worker) claimed it first."""
    with write(db):
        if query_one(db, "SELECT id FROM runs WHERE status = 'running'"):
            return None
        claimed = _claim(db, run_id, run_dir, worker_id, lease_s)
    return get_run(db, run_id) if claimed else None


def renew_lease(db: Database, run_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> None:
    """Extend the holder's lease by `lease_s` from now. LeaseLost when the run is no longer running under it.

    A lease that expired but that nobody took over yet is still the holder's: a slow worker keeps its run.
    """
    with write(db):
        cursor = db.execute(
            "UPDATE runs SET heartbeat_at = ?, lease_until = ? WHERE id = ? AND status = 'running' AND worker_id = ?",
            [now(), _lease_end(lease_s), run_id, worker_id],
        )
        if cursor.rowcount != 1:
            raise LeaseLost(_not_held(db, run_id, worker_id))


def _not_held(db: Database, run_id: int, worker_id: str) -> str:
    run = get_run(db, run_id)
    return f"run {run_id} is {run.status} (held by {run.worker_id or 'no worker'}), no longer {worker_id}'s"


def expired_runs(db: Database) -> list[Run]:
    """Running runs whose lease has expired (or that were claimed before leases existed): their worker is gone."""
    return [
        _run(r)
        for r in db.query(
            "SELECT * FROM runs WHERE status = 'running' AND (lease_until IS NULL OR lease_until < ?) ORDER BY id",
            [now()],
        )
    ]


def interrupt_expired(db: Database, run_id: int, error: str) -> Run | None:
    """Mark a running run whose lease has expired as interrupted; None when its holder renewed it meanwhile
    (or another worker settled it first)."""
    with write(db):
        cursor = db.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? "
            "WHERE id = ? AND status = 'running' AND (lease_until IS NULL OR lease_until < ?)",
            [now(), error, run_id, now()],
        )
    return get_run(db, run_id) if cursor.rowcount == 1 else None


def finish_run(
    db: Database,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    adapter_version: int | None = None,
    dataset_stats: dict | None = None,
    worker_id: str | None = None,
) -> Run:
    """End a run. Only an active run can end; ending twice is a RunConflict.

    With `worker_id`, only a running run still leased to it ends (else LeaseLost): call it inside the
    transaction that registers the run's adapter, so a run another worker took over registers nothing.
    """
    if status not in FINISHED:
        raise ValueError(f"status must be one of {FINISHED}, got {status!r}")
    held = "status = 'running' AND worker_id = ?" if worker_id is not None else "status IN ('queued', 'running')"
    with write(db):
        cursor = db.execute(
            f"""UPDATE runs SET status = ?, finished_at = ?, error = ?, adapter_version = ?,
                   dataset_stats = COALESCE(?, dataset_stats)
               WHERE id = ? AND {held}""",
            [
                status,
                now(),
                error,
                adapter_version,
                json.dumps(dataset_stats) if dataset_stats is not None else None,
                run_id,
                *([worker_id] if worker_id is not None else []),
            ],
        )
        if cursor.rowcount != 1 and worker_id is not None:
            raise LeaseLost(_not_held(db, run_id, worker_id))
        if cursor.rowcount != 1:
            raise RunConflict(f"run {run_id} is {get_run(db, run_id).status}, not active")
    return get_run(db, run_id)


def add_metrics(db: Database, run_id: int, metrics: list[dict]) -> int:
    """Store metric lines (as the trainer writes them); a line seen before is ignored. Returns how many were new."""
    added = 0
    with write(db):
        for m in metrics:
            cursor = db.execute(
                """INSERT INTO run_metrics (run_id, kind, step, epoch, train_loss, eval_loss, learning_rate)
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, kind, step) DO NOTHING""",
                [
                    run_id,
                    m["kind"],
                    m["step"],
                    m.get("epoch"),
                    m.get("train_loss"),
                    m.get("eval_loss"),
                    m.get("learning_rate"),
                ],
            )
            added += cursor.rowcount
    return added


def run_metrics(db: Database, run_id: int) -> list[Metric]:
    return [
        Metric(**r)
        for r in db.query(
            "SELECT kind, step, epoch, train_loss, eval_loss, learning_rate FROM run_metrics "
            "WHERE run_id = ? ORDER BY step, kind",
            [run_id],
        )
    ]
