"""Glue between storage and the trainer: export a run, execute it as a child process, register the result.

The trainer runs in its own process (`python -m trainer RUN_DIR`), so a crash
or an out-of-memory kill cannot take the caller down. Its metrics.jsonl is
followed into storage as it grows. The CLI's `supportbot train` and the
worker both use `execute_run`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from storage import adapters, labels, runs, served
from trainer.data import write_jsonl
from trainer.metrics import read_metrics

from .serving import recorded_choice
from .settings import Settings

RUN_BOOKKEEPING = ("retry_of",)  # run params for the queue, not for the trainer's config
# Every option named here is one /retrain accepts (bot.commands.RETRAIN_NUMBERS and RETRAIN_SWITCHES).
OOM_HINT = ("Out of memory. Try a smaller batch with more accumulation (same effective batch): "
            "`/retrain batch_size=2 grad_accum=8`, or `/retrain gradient_checkpointing=true`; "
            "on a CUDA host the base model is loaded in 4-bit by default.")


@dataclass
class RunOutcome:
    run: runs.Run
    result: dict
    adapter: adapters.Adapter | None
    promoted: bool


def run_dir_for(settings: Settings, run_id: int) -> Path:
    return settings.runs_dir / f"run-{run_id}"


def training_examples(db) -> list[dict]:
    """The labeled messages as the trainer and the data check read them (subject apart, as serving passes it)."""
    return [{"id": m.message_id, "text": m.text, "subject": m.subject, "label": m.label, "labeled_by": m.labeled_by}
            for m in labels.labeled_messages(db)]


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
    examples = training_examples(db)
    current = adapters.current_adapter(db)
    config = {"labels": label_set(db, examples),
              "base_model": settings.base_model, "model_cache_dir": str(settings.model_cache_dir),
              "promotion_margin": settings.promotion_margin,
              "compare_adapter": current.path if current and Path(current.path).is_dir() else "",
              "serving_model": recorded_choice(db)}
    config.update({k: v for k, v in run.params.items() if k not in RUN_BOOKKEEPING})
    (run_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_jsonl(run_dir / "train.jsonl", examples)
    return run_dir


PID_FILE = "trainer.pid"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the worker dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: recovery still kills orphans by their recorded pid


def start_trainer(run_dir: Path) -> subprocess.Popen:
    """The trainer as a child process in its own process group, its pid recorded in the run directory."""
    with open(run_dir / "trainer.log", "ab") as log:  # the child writes through its own copy of the handle
        child = subprocess.Popen([sys.executable, "-m", "trainer", str(run_dir)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    (run_dir / PID_FILE).write_text(str(child.pid))
    return child


def kill_orphan(run_dir: str | Path) -> bool:
    """Kill a trainer left running by a worker that died (its process group, if it is still a trainer)."""
    import signal

    pid_file = Path(run_dir) / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text() or 0)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"trainer" not in cmdline or str(run_dir).encode() not in cmdline:
        return False  # the pid was reused by something else
    os.killpg(pid, signal.SIGKILL)
    return True


def follow(db, run_id: int, run_dir: Path, child: subprocess.Popen, on_progress: Callable[[dict], None] | None = None,
           poll_s: float = 0.5) -> int:
    """Copy metric lines into storage while the child runs; returns its exit code."""
    offset = 0
    while True:
        records, offset = read_metrics(run_dir / "metrics.jsonl", offset)
        if records:
            runs.add_metrics(db, run_id, [r for r in records if r["kind"] in ("train", "eval")])
            if on_progress:
                on_progress(records[-1])
        code = child.poll()
        if code is not None:
            records, offset = read_metrics(run_dir / "metrics.jsonl", offset)
            runs.add_metrics(db, run_id, [r for r in records if r["kind"] in ("train", "eval")])
            return code
        time.sleep(poll_s)


def explain_failure(run_dir: Path, code: int, result: dict | None) -> str:
    if result and result.get("error"):
        error = result["error"]
        return f"{error} {OOM_HINT}" if "out of memory" in error.lower() and OOM_HINT not in error else error
    if code in (-9, 137):
        return f"the trainer was killed (signal 9), most likely by the out-of-memory killer. {OOM_HINT}"
    tail = ""
    log = run_dir / "trainer.log"
    if log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        tail = f": {tail[0][:300]}"
    return f"the trainer exited with status {code}{tail}"


def register_result(settings: Settings, db, run: runs.Run, result: dict) -> tuple[adapters.Adapter, bool]:
    """Copy the run's adapter into the registry (atomically), record it, promote it if the gate says so."""
    source = Path(result["adapter_dir"])
    target = settings.adapters_dir / f"run-{run.id}"
    staging = settings.adapters_dir / f".run-{run.id}.partial"
    settings.adapters_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    summary = {k: result["metrics"][k] for k in ("accuracy", "macro_f1", "n")}
    if result.get("baseline"):
        summary["baseline_accuracy"] = result["baseline"]["accuracy"]
    adapter = adapters.register_adapter(db, path=str(target), base_model=result["base_model"],
                                        labels=result["labels"], metrics=summary, run_id=run.id)
    promoted = bool(result["promotion"]["promote"])
    if promoted:
        adapter = adapters.promote(db, adapter.version)
    gate = result.get("gate")
    if gate and (promoted or gate["kind"] == "embeddings"):
        served.set_served(db, gate["kind"], adapter_version=adapter.version if promoted else None,
                          details=gate["details"], reason=gate["reason"], run_id=run.id, chosen_by="gate")
    return adapter, promoted


def execute_run(settings: Settings, db, run: runs.Run, on_progress=None, on_start=None,
                interrupted: Callable[[], bool] = lambda: False) -> RunOutcome:
    """Execute a claimed (running) run end to end and record how it ended.

    `interrupted()` true after the child exits means the worker stopped it (SIGTERM): the run is
    marked interrupted rather than failed, and nothing it produced is registered.
    """
    run_dir = prepare_run(settings, db, run)
    child = start_trainer(run_dir)
    if on_start:
        on_start(child)
    code = follow(db, run.id, run_dir, child, on_progress)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    stats = (result or {}).get("data")
    if interrupted() and not (code == 0 and result and result["status"] == "succeeded"):
        finished = runs.finish_run(db, run.id, "interrupted", error="the worker was stopped during this run",
                                   dataset_stats=stats)
        return RunOutcome(finished, result or {}, None, False)
    if code == 0 and result and result["status"] == "succeeded":
        adapter, promoted = register_result(settings, db, run, result)
        finished = runs.finish_run(db, run.id, "succeeded", adapter_version=adapter.version, dataset_stats=stats)
        return RunOutcome(finished, result, adapter, promoted)
    status = "cancelled" if result and result["status"] == "cancelled" else "failed"
    finished = runs.finish_run(db, run.id, status, error=explain_failure(run_dir, code, result), dataset_stats=stats)
    return RunOutcome(finished, result or {}, None, False)
