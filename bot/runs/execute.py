"""Glue between storage and the trainer: export a run, execute it on a run backend, register the result.

The trainer runs in its own process (`python -m trainer RUN_DIR`), as a child
of the caller or on a Ray cluster (bot.runs), so a crash or an out-of-memory
kill cannot take the caller down. Its metrics.jsonl is followed into storage
as it grows. The CLI's `supportbot train` and the worker both use `execute_run`.

A run is leased to the process that claimed it (storage.runs): `follow` renews the lease while the run
executes, and the run finishes (registering and promoting its adapter in the same transaction) only
while this process still holds it. A run another worker took over as dead is stopped, and nothing it
produced is registered.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from classifier.encoders import ENCODERS
from classifier.kinds import kind
from jsonl import write_jsonl
from storage import LeaseLost, adapters, labels, runs, served, write
from storage import embeddings as stored_embeddings
from trainer.config import TrainConfig
from trainer.data import POOL_TEXTS, POOL_VECTORS
from trainer.methods.loop import CANCEL_FILE
from trainer.metrics import read_metrics
from trainer.run import request_cancel  # noqa: F401 - the bot asks a run to stop through its pipeline

from ..serving import recorded_choice
from ..settings import Settings
from .backend import Ending, RunBackend, RunHandle, backend_for
from .local import owner_of

log = logging.getLogger(__name__)

RUN_BOOKKEEPING = ("retry_of",)  # run params for the queue, not for the trainer's config
# Every option named here is one /retrain accepts (bot.slack.listeners.commands.RETRAIN_NUMBERS and RETRAIN_SWITCHES).
OOM_HINT = (
    "Out of memory. Try a smaller batch with more accumulation (same effective batch): "
    "`/retrain batch_size=2 grad_accum=8`, or `/retrain gradient_checkpointing=true`; "
    "on a CUDA host the base model is loaded in 4-bit by default."
)


@dataclass
class RunOutcome:
    run: runs.Run
    result: dict
    adapter: adapters.Adapter | None
    promoted: bool
    lease_lost: str = ""  # why, when another worker took the run over: this process recorded nothing


def new_worker_id(role: str) -> str:
    """An id for a process that claims runs: unique, and saying where it runs (shown when a lease is lost)."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """This process's hold on a claimed run (storage.runs), renewed every sixth of its length while followed."""

    def __init__(self, db, run: runs.Run, lease_s: float):
        self.db, self.run_id, self.worker_id, self.lease_s = db, run.id, run.worker_id, lease_s
        self.renewed_at = time.monotonic()
        self.lost = ""  # why, once another worker took the run over

    def keep(self) -> bool:
        """Renew the lease when due; False once it is lost (then it stays lost)."""
        if self.worker_id is None:  # claimed without a holder (before leases existed): nothing to renew
            return True
        if not self.lost and time.monotonic() - self.renewed_at >= self.lease_s / 6:
            try:
                runs.renew_lease(self.db, self.run_id, self.worker_id, self.lease_s)
                self.renewed_at = time.monotonic()
            except LeaseLost as exc:
                self.lost = str(exc)
        return not self.lost


def run_dir_for(settings: Settings, run_id: int) -> Path:
    return settings.runs_dir / f"run-{run_id}"


def label_set(db, examples: list[dict]) -> list[dict]:
    """The labels a run on `examples` trains: those in use, with their descriptions (the prompt names them)."""
    defs = {d.name: d.description for d in labels.list_label_defs(db)}
    return [{"name": name, "description": defs.get(name, "")} for name in sorted({e["label"] for e in examples})]


def prepare_run(settings: Settings, db, run: runs.Run) -> Path:
    """Write config.json and train.jsonl for `run` (the trainer makes the stratified split)."""
    run_dir = Path(run.run_dir) if run.run_dir else run_dir_for(settings, run.id)
    shutil.rmtree(run_dir, ignore_errors=True)  # a re-queued run starts clean
    from storage.db import private_folder

    private_folder(run_dir)  # 0700: it gets a copy of the labeled messages
    examples = labels.training_examples(db)
    current = adapters.current_adapter(db)
    config = {
        "labels": label_set(db, examples),
        "base_model": settings.base_model,
        "embedding_model": settings.embedding_model,
        "model_cache_dir": str(settings.model_cache_dir),
        "promotion_margin": settings.promotion_margin,
        "promotion_significance": settings.promotion_significance,
        "compare_adapter": current.path if current and Path(current.path).is_dir() else "",
        "serving_model": recorded_choice(db),
    }
    config.update({k: v for k, v in run.params.items() if k not in RUN_BOOKKEEPING})
    if current and current.base_model != config["base_model"]:
        config["compare_adapter"] = ""  # an adapter loads on its own base model only; the gate goes without it
        config["serving_model"] = {
            **config["serving_model"],
            "not_comparable": (f"it was trained on another base model, {current.base_model}"),
        }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_jsonl(run_dir / "train.jsonl", examples)
    if config.get("baseline", True):  # without the embedding candidates the trainer teaches no student
        export_unlabelled(
            settings, db, run_dir, config.get("unlabelled_max", TrainConfig().unlabelled_max), config["embedding_model"]
        )
    return run_dir


def export_unlabelled(settings: Settings, db, run_dir: Path, cap, run_encoder: str) -> int:
    """Write the newest `cap` messages no one labelled, with the vectors intake stored for them, for the run's
    student (trainer.data.read_unlabelled reads and checks them). Returns how many were written.

    Nothing when the run's encoder (`run_encoder`, a `--set embedding_model=...`) is not the one the bot
    stores vectors of: those vectors would be another encoder's."""
    import numpy as np

    from classifier.encoders import encoder

    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        return 0  # the trainer's config check says what is wrong with a bad cap
    which = encoder(settings.embedding_model)
    if run_encoder not in ENCODERS or encoder(run_encoder).name != which.name:
        return 0
    rows = [
        r
        for r in stored_embeddings.unlabelled_vectors(db, which.name, cap)
        if len(r["vector"]) == 4 * which.dimensions  # a vector of another length is no vector of this encoder
    ]
    if not rows:
        return 0
    write_jsonl(run_dir / POOL_TEXTS, ({"id": r["id"], "text": r["clean_body"], "subject": r["subject"]} for r in rows))
    vectors = np.stack([np.frombuffer(r["vector"], dtype="<f4") for r in rows])
    with open(os.open(run_dir / POOL_VECTORS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        np.save(f, vectors, allow_pickle=False)
    return len(rows)


def follow(
    db,
    run_id: int,
    run_dir: Path,
    handle: RunHandle,
    on_progress: Callable[[dict], None] | None = None,
    poll_s: float = 0.5,
    lease: Lease | None = None,
) -> Ending:
    """Copy metric lines into storage while the run executes (and pass on a cancel); returns how it ended.

    With a `lease`, it is renewed as the run is followed; once lost, the run is stopped (it is no longer ours).
    """
    offset, cancelled, stopped = 0, False, False
    while True:
        if not cancelled and (run_dir / CANCEL_FILE).exists():
            cancelled = True
            handle.cancel()
        if lease is not None and not lease.keep() and not stopped:
            stopped = True
            log.warning("run %d was taken over by another worker (%s): stopping its trainer here", run_id, lease.lost)
            handle.stop()
        records, offset = read_metrics(run_dir / "metrics.jsonl", offset)
        if records and not stopped:
            runs.add_metrics(db, run_id, [r for r in records if r["kind"] in ("train", "eval")])
            if on_progress:
                on_progress(records[-1])
        ending = handle.poll()
        if ending is not None:
            records, offset = read_metrics(run_dir / "metrics.jsonl", offset)
            if not stopped:
                runs.add_metrics(db, run_id, [r for r in records if r["kind"] in ("train", "eval")])
            return ending
        time.sleep(poll_s)


def explain_failure(run_dir: Path, code: int | None, result: dict | None, reason: str = "") -> str:
    if result and result.get("error"):
        error = result["error"]
        return f"{error} {OOM_HINT}" if "out of memory" in error.lower() and OOM_HINT not in error else error
    if reason:  # the backend knows more than an exit status says (a Ray task killed for memory, say)
        return reason
    if code in (-9, 137):
        return f"the trainer was killed (signal 9), most likely by the out-of-memory killer. {OOM_HINT}"
    tail = ""
    log = run_dir / "trainer.log"
    if log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        tail = f": {tail[0][:300]}"
    return f"the trainer exited with status {code}{tail}"


def install_adapter(settings: Settings, run: runs.Run, result: dict) -> Path:
    """Copy the run's adapter into the registry's folder (atomically: staged, then renamed). Returns where."""
    source = Path(result["adapter_dir"])
    target = settings.adapters_dir / f"run-{run.id}"
    staging = settings.adapters_dir / f".run-{run.id}.partial"
    settings.adapters_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def record_adapter(db, run: runs.Run, result: dict, path: Path, checksum: str) -> tuple[adapters.Adapter, bool]:
    """Record the installed adapter, promote it if the gate says so, record what the gate chose: one transaction."""
    summary = {k: result["metrics"][k] for k in ("accuracy", "macro_f1", "n")}
    if result.get("baseline"):
        summary["baseline_accuracy"] = result["baseline"]["accuracy"]
    with write(db):
        adapter = adapters.register_adapter(
            db,
            path=str(path),
            base_model=result["base_model"],
            labels=result["labels"],
            metrics=summary,
            run_id=run.id,
            checksum=checksum,
        )
        promoted = bool(result["promotion"]["promote"])
        if promoted:
            adapter = adapters.promote(db, adapter.version)
        gate = result.get("gate")
        if gate and (promoted or not kind(gate["kind"]).needs_adapter):  # the embeddings need no adapter
            served.set_served(
                db,
                gate["kind"],
                adapter_version=adapter.version if promoted else None,
                details=gate["details"],
                reason=gate["reason"],
                run_id=run.id,
                chosen_by="gate",
            )
    return adapter, promoted


def register_result(settings: Settings, db, run: runs.Run, result: dict) -> tuple[adapters.Adapter, bool]:
    """Copy the run's adapter into the registry (atomically), record it, promote it if the gate says so."""
    target = install_adapter(settings, run, result)
    return record_adapter(db, run, result, target, adapters.folder_checksum(target))


def finish_succeeded(settings: Settings, db, run: runs.Run, result: dict, stats: dict | None) -> RunOutcome:
    """Register the adapter, promote it and end the run in one transaction, only while this process holds the run.

    LeaseLost (another worker took the run over) rolls all of it back, and the copied adapter files are removed.
    """
    target = install_adapter(settings, run, result)
    checksum = adapters.folder_checksum(target)  # read every byte before the write lock, not under it
    try:
        with write(db):
            adapter, promoted = record_adapter(db, run, result, target, checksum)
            finished = runs.finish_run(
                db, run.id, "succeeded", adapter_version=adapter.version, dataset_stats=stats, worker_id=run.worker_id
            )
    except LeaseLost:
        shutil.rmtree(target, ignore_errors=True)  # never registered: nothing refers to it
        raise
    return RunOutcome(finished, result, adapter, promoted)


def execute_run(
    settings: Settings,
    db,
    run: runs.Run,
    on_progress=None,
    on_start=None,
    interrupted: Callable[[], bool] = lambda: False,
    backend: RunBackend | None = None,
) -> RunOutcome:
    """Execute a claimed (running) run end to end on `backend` (default: the settings') and record how it ended.

    `interrupted()` true after the run ends means the worker stopped it (SIGTERM): the run is
    marked interrupted rather than failed, and nothing it produced is registered. So is a run
    the backend lost (its host or worker died); its error says why. A run another worker took
    over (this process's lease on it expired) records nothing here: its outcome says `lease_lost`.
    """
    lease = Lease(db, run, settings.run_lease_s)
    run_dir = prepare_run(settings, db, run)
    handle = (backend or backend_for(settings, owner_of(settings.db_path, run.worker_id))).start(run_dir)
    if on_start:
        on_start(handle)
    ending = follow(db, run.id, run_dir, handle, on_progress, lease=lease)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    try:
        return _record_ending(settings, db, run, run_dir, ending, result, interrupted())
    except LeaseLost as exc:
        log.warning("run %d: nothing it produced was registered here: %s", run.id, exc)
        return RunOutcome(runs.get_run(db, run.id), result or {}, None, False, lease_lost=str(exc))


def _record_ending(
    settings: Settings, db, run: runs.Run, run_dir: Path, ending: Ending, result: dict | None, interrupted: bool
) -> RunOutcome:
    """Finish the run as its ending says (LeaseLost when this process no longer holds it)."""
    code, stats = ending.code, (result or {}).get("data")

    def finish(status, **kwargs):
        return runs.finish_run(db, run.id, status, dataset_stats=stats, worker_id=run.worker_id, **kwargs)

    if interrupted and not (code == 0 and result and result["status"] == "succeeded"):
        return RunOutcome(
            finish("interrupted", error="the worker was stopped during this run"), result or {}, None, False
        )
    if ending.lost:
        return RunOutcome(finish("interrupted", error=ending.reason), result or {}, None, False)
    if code == 0 and result and result["status"] == "succeeded":
        return finish_succeeded(settings, db, run, result, stats)
    status = "cancelled" if result and result["status"] == "cancelled" else "failed"
    return RunOutcome(
        finish(status, error=explain_failure(run_dir, code, result, ending.reason)), result or {}, None, False
    )
