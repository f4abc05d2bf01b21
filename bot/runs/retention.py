"""How long copies of labeled messages are kept outside the database.

A training run gets its own copy of the labeled messages (`runs/run-N/train.jsonl`, and the
eval split with its predictions), and of the newest unlabelled ones with their vectors
(`unlabelled.jsonl`, `unlabelled.npy`) when it teaches a student. Once the run is over they are only needed to look into it,
so they are deleted `SUPPORTBOT_KEEP_RUN_INPUTS_DAYS` after it finished; its metrics, report,
log and adapter stay. The database keeps the messages themselves.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from storage import runs

RUN_INPUTS = ("train.jsonl", "eval.jsonl", "eval_predictions.jsonl", "unlabelled.jsonl", "unlabelled.npy")


def remove_old_run_inputs(settings, db, *, now: dt.datetime | None = None) -> str:
    """Delete the message copies of runs that finished more than the setting's days ago. Says what it did."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = (now - dt.timedelta(days=settings.keep_run_inputs_days)).isoformat(timespec="milliseconds")
    removed = 0
    for run in runs.finished_before(db, cutoff):
        if not run.run_dir:
            continue
        for name in RUN_INPUTS:
            path = Path(run.run_dir) / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
    return f"removed {removed} files of runs finished before {cutoff[:10]}"
