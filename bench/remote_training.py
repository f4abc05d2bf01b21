"""Remote training: the same /retrain through a local Ray head and on the local backend, cancel, a killed Ray worker.

One machine plays both hosts: a one-node Ray cluster (CPU only, 2 CPUs) started here, and the worker
(`bot.runs.worker.Worker`, as `supportbot worker` runs it) with SUPPORTBOT_RAY_ADDRESS pointing at it. The
model is the tests' tiny Llama on the toy task (60 labeled messages, 3 epochs), so what is measured is
the backend's cost around a short run, not training speed.

- local_seconds / ray_seconds: claim to finished run (registered, report in the outbox), each backend,
  the trainer on one thread in both (Ray's default for a 1-CPU task).
- first_progress_seconds: claim to the first progress message with a training step in the outbox (the
  relay then posts it within its 2 s tick), through Ray.
- cancel_seconds: `/retrain cancel` (the cancel file) to the run ended, through Ray.
- killed_worker: the Ray worker process running a run SIGKILLed mid-training: the run's state, and
  whether the adapter serving before it still serves.

Writes bench/results/remote_training.json.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))  # read by Ray at import
# Ray gives a task asking for 1 CPU one OpenMP thread; the local trainer gets the same, so the two runs
# differ by the backend only (on a busy 2-core machine, 2 threads made the tiny model's steps 10x slower).
os.environ["OMP_NUM_THREADS"] = "1"

RESULT = REPO / "bench" / "results" / "remote_training.json"
FAST = {"learning_rate": 0.01, "grad_accum": 1, "epochs": 3, "baseline": False}
LONG = {**FAST, "epochs": 200}


def make_settings(data_dir: Path, model: str, **extra):
    from bot.settings import load_settings

    return load_settings(
        {
            "SUPPORTBOT_DATA_DIR": str(data_dir),
            "SUPPORTBOT_BASE_MODEL": model,
            "SUPPORTBOT_ZERO_SHOT_MODEL": model,
            "SUPPORTBOT_REPORT_CHANNEL": "C0REPORTS",
            **extra,
        },
        env_file=None,
    )


def label_toy_data(settings) -> None:
    from storage import labels, messages, open_db
    from tests.conftest import toy_examples

    db = open_db(settings.db_path)
    for i, e in enumerate(toy_examples()):
        m, _ = messages.add_message(db, source="import", external_id=f"toy:{i}", raw_body=e["text"])
        labels.add_label_def(db, e["label"])
        labels.add_label(db, m.id, e["label"], by="U0BENCH", method="cli")


def timed_worker(settings):
    """A worker whose channel messages are time-stamped as they are put in the outbox."""
    from bot.runs.worker import Worker
    from bot.slack import reports

    worker = Worker(settings, reports, poll_s=0.1, progress_every_s=0.0)
    said, put = [], worker._say

    def record(key, payload, **kwargs):
        said.append((time.time(), key, payload))
        put(key, payload, **kwargs)

    worker._say = record
    return worker, said


def one_run(settings, params) -> dict:
    """Queue and execute one run; seconds to its end and to its first progress with a training step."""
    from storage import open_db, runs

    db = open_db(settings.db_path)
    run = runs.queue_run(db, requested_by="U0BENCH", params=params)
    worker, said = timed_worker(settings)
    started = time.time()
    worker.run_once()
    seconds = time.time() - started
    moving = [t for t, key, p in said if key.endswith(":progress") and p["text"] not in (f"Training run {run.id}: 0%",)]
    result = json.loads((settings.runs_dir / f"run-{run.id}" / "result.json").read_text())
    return {
        "status": runs.get_run(db, run.id).status,
        "seconds": round(seconds, 1),
        "train_seconds": round(result.get("training", {}).get("train_seconds") or 0, 1),
        "first_progress_seconds": round(moving[0] - started, 1) if moving else None,
    }


def in_background(settings, params):
    """Start a long run in a thread; returns (worker, thread, run id) once its metrics come back."""
    from storage import open_db, runs

    db = open_db(settings.db_path)
    run = runs.queue_run(db, requested_by="U0BENCH", params=params)
    worker, _ = timed_worker(settings)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    metrics = settings.runs_dir / f"run-{run.id}" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        if time.time() > deadline:
            raise TimeoutError("no training metrics came back")
        time.sleep(0.2)
    return worker, thread, run.id


def main() -> int:
    import ray

    from storage import adapters, open_db, runs
    from tests.conftest import build_tiny_model
    from trainer.run import request_cancel

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="remote-training-"))
    model = build_tiny_model(work / "tiny-model")
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    address = ray.get_runtime_context().gcs_address
    try:
        local = make_settings(work / "local", model)
        on_ray = make_settings(work / "ray", model, SUPPORTBOT_RAY_ADDRESS=address, SUPPORTBOT_RAY_NUM_GPUS="0")
        for settings in (local, on_ray):
            label_toy_data(settings)
        local_run = one_run(local, FAST)
        ray_run = one_run(on_ray, FAST)
        print(f"ray: {ray_run}\nlocal: {local_run}", file=sys.stderr)

        worker, thread, run_id = in_background(on_ray, LONG)
        asked = time.time()
        request_cancel(on_ray.runs_dir / f"run-{run_id}")  # what /retrain cancel does
        thread.join(120)
        cancel_seconds = time.time() - asked
        db = open_db(on_ray.db_path)
        cancelled = runs.get_run(db, run_id).status
        print(f"cancel: {cancelled} after {cancel_seconds:.1f} s", file=sys.stderr)

        serving = adapters.current_adapter(db)
        worker, thread, run_id = in_background(on_ray, LONG)
        os.kill(ray.get(worker._handle.actor.pid.remote()), signal.SIGKILL)
        thread.join(120)
        killed = runs.get_run(db, run_id)
        after = adapters.current_adapter(db)
        print(f"killed worker: {killed.status}: {killed.error}; serving v{after.version}", file=sys.stderr)
    finally:
        ray.shutdown()
    result = {
        "backend": "ray",
        "status": ray_run["status"],
        "ray_seconds": ray_run["seconds"],
        "local_seconds": local_run["seconds"],
        "first_progress_seconds": ray_run["first_progress_seconds"],
        "cancel_seconds": round(cancel_seconds, 1) if cancelled == "cancelled" else None,
        "killed_worker": {
            "run_status": killed.status,
            "serving_adapter_unchanged": serving is not None and after is not None and after.version == serving.version,
        },
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
