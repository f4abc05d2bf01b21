"""The Ray backend: the trainer runs on a Ray cluster (a GPU host); the worker stays by the bot and the database.

Why a Ray actor and not Ray's job submission API. A job is a shell command
with a working folder uploaded through the head's dashboard (the `ray[default]`
extra and its HTTP server); it returns nothing but an exit status and a log, so
metrics would have to be scraped from the log and the adapter brought back
through storage both hosts share. An actor is one Python object per run,
placed on a node with the GPUs asked for, and each of its methods is a call
that returns a value:

- the run's inputs (config, data, the serving adapter it is compared with)
  travel as bytes with the call that creates it, through Ray's object store;
- `read(offset)` returns the metrics lines written since the last call, so the
  follower sees metrics.jsonl grow as with a local run, and the Slack progress
  message moves;
- `outputs()` returns the adapter, result, report and picture as one tarball;
- a cancel is a method call (the trainer stops at its next step), and
  `ray.kill` ends it by force when it does not stop within seconds;
- the actor's death comes back as a typed error (`ActorDiedError`, its node
  died, its process was killed or was killed for memory), told apart below;
- it needs only the plain `ray` package, and a non-detached actor shares the
  fate of the worker that owns it: a worker that dies takes its run with it,
  as a local child process does.

Inside the actor the trainer is still `python -m trainer RUN_DIR` in a child
process (dying with the actor), so exit statuses, trainer.log and the cancel
file mean what they mean locally. Every node that trains needs this package
installed, with the same Ray and Python versions as the worker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from .backend import Ending

log = logging.getLogger(__name__)

INPUTS = ("config.json", "train.jsonl", "eval.jsonl", "unlabelled.jsonl", "unlabelled.npy")
SERVING = "serving-adapter"  # where the adapter the run is compared with lands on the node
NOT_OUTPUTS = {*INPUTS, SERVING, "checkpoints", "metrics.jsonl", "trainer.pid", "cancel"}
CANCEL_GRACE_S = 10.0  # a cancelled trainer that has not stopped by then (still loading, say) is killed
RUNNING_LOW_ON_MEMORY = ("NODE_OUT_OF_MEMORY", "running low on memory")  # Ray's memory monitor, in the error text


def pack(folder: Path, names=None, skip=()) -> bytes:
    """A gzip tarball of `names` in `folder` (default: everything but `skip`), as bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names if names is not None else sorted(p.name for p in folder.iterdir()):
            if name not in skip and (folder / name).exists():
                tar.add(folder / name, arcname=name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")  # no links out, no absolute paths


class RemoteRun:
    """Lives on the Ray node: the run directory there and the trainer working in it."""

    def __init__(self, inputs: bytes, serving: bytes | None):
        from .local import start_trainer

        self.dir = Path(tempfile.mkdtemp(prefix="supportbot-run-"))
        unpack(inputs, self.dir)
        config = json.loads((self.dir / "config.json").read_text(encoding="utf-8"))
        if serving is not None:
            unpack(serving, self.dir / SERVING)
            config["compare_adapter"] = str(self.dir / SERVING)
        else:
            config["compare_adapter"] = ""
        # The embedded model is converted once per node, not once per run.
        config["model_cache_dir"] = str(Path(tempfile.gettempdir()) / "supportbot-models")
        (self.dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.child = start_trainer(self.dir)

    def pid(self) -> int:
        """This actor's process (the trainer is its child and dies with it)."""
        return os.getpid()

    def read(self, offset: int) -> tuple[bytes, int, int | None]:
        """Whole metrics lines written since `offset`, the new offset, and the trainer's exit status if it ended."""
        code = self.child.poll()  # before reading, so nothing written before the exit is missed
        try:
            with open(self.dir / "metrics.jsonl", "rb") as metrics:
                metrics.seek(offset)
                data = metrics.read()
        except FileNotFoundError:
            data = b""
        data = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        return data, offset + len(data), code

    def cancel(self) -> None:
        from trainer.run import request_cancel

        request_cancel(self.dir)

    def outputs(self) -> bytes:
        """Everything the trainer wrote but the metrics (already streamed): adapter, result, report, logs."""
        return pack(self.dir, skip=NOT_OUTPUTS)

    def discard(self) -> None:
        """Remove the run directory from the node once its outputs are safe on the worker's side."""
        shutil.rmtree(self.dir, ignore_errors=True)


def connect(address: str) -> None:
    """Join the cluster as a driver, once per process, keeping the caller's SIGTERM handler.

    ray.init installs its own (exit at once); the worker's must stay, so that a stop
    re-queues the run rather than dropping it."""
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _why(exc: Exception) -> Ending:
    """Tell a lost run (node or worker gone: try again) from a failed one (it would fail again)."""
    from ray import exceptions as rx

    text = str(exc)
    if isinstance(exc, rx.OutOfMemoryError) or any(mark in text for mark in RUNNING_LOW_ON_MEMORY):
        from .execute import OOM_HINT

        return Ending(None, reason=f"Ray killed the training run: its node was running low on memory. {OOM_HINT}")
    if isinstance(exc, rx.RayActorError) and exc.actor_init_failed:
        first = next((line for line in text.splitlines() if line.strip()), text)
        return Ending(None, reason=f"the run could not start on the Ray cluster: {first[:300]}")
    if isinstance(exc, rx.NodeDiedError) or "node has died" in text or "NODE_DIED" in text:
        return Ending(None, lost=True, reason="the Ray node running it died")
    if isinstance(exc, (rx.RayActorError, rx.WorkerCrashedError, rx.LocalRayletDiedError)):
        return Ending(None, lost=True, reason="the Ray worker running it died (killed or crashed)")
    return Ending(None, lost=True, reason=f"Ray lost it: {type(exc).__name__}: {text.splitlines()[0][:300]}")


class RayRun:
    """The worker's side of one run: polls the actor without ever blocking on it."""

    def __init__(self, run_dir: Path, actor):
        self.run_dir, self.actor = run_dir, actor
        self.offset, self.pending = 0, None
        self.cancelled_at: float | None = None
        self.stopping = False

    def poll(self) -> Ending | None:
        import ray

        if self.stopping:
            ray.kill(self.actor)
            return Ending(None, lost=True, reason="the worker was stopped during this run")
        if self.cancelled_at is not None and time.time() - self.cancelled_at > CANCEL_GRACE_S:
            ray.kill(self.actor)
            self._write_result(
                {
                    "status": "cancelled",
                    "error": f"cancelled on request (the trainer had not stopped after {CANCEL_GRACE_S:.0f} s: killed)",
                }
            )
            return Ending(None)
        if self.pending is None:
            self.pending = self.actor.read.remote(self.offset)
        ready, _ = ray.wait([self.pending], timeout=0)
        if not ready:  # still waiting for a node with the GPUs asked, or for the call to come back
            return None
        try:
            data, self.offset, code = ray.get(self.pending)
            self.pending = None
            with open(self.run_dir / "metrics.jsonl", "ab") as metrics:
                metrics.write(data)
            if code is None:
                return None
            unpack(ray.get(self.actor.outputs.remote()), self.run_dir)
            ray.get(self.actor.discard.remote())
        except ray.exceptions.ActorUnavailableError:  # a network blip: Ray says ActorDiedError if it is gone
            self.pending = None
            return None
        except ray.exceptions.RayError as exc:
            ending = _why(exc)
            log.warning("run in %s ended on Ray: %s (%s)", self.run_dir, ending.reason, exc)
            return ending
        ray.kill(self.actor)
        self._localise_result()
        return Ending(code)

    def cancel(self) -> None:
        self.cancelled_at = time.time()
        self.actor.cancel.remote()

    def stop(self) -> None:
        self.stopping = True  # acted on by the next poll: Ray calls do not belong in a signal handler

    def _localise_result(self) -> None:
        """result.json names the adapter where the node wrote it: point it at the copy here."""
        path = self.run_dir / "result.json"
        if path.exists():
            result = json.loads(path.read_text(encoding="utf-8"))
            if result.get("adapter_dir"):
                result["adapter_dir"] = str(self.run_dir / "adapter")
                self._write_result(result)

    def _write_result(self, result: dict) -> None:
        tmp = self.run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        tmp.replace(self.run_dir / "result.json")


class Unstarted:
    """A run that could not be handed to the cluster: it ends at the first poll, saying why."""

    def __init__(self, ending: Ending):
        self.ending = ending

    def poll(self) -> Ending:
        return self.ending

    def cancel(self) -> None:
        pass

    def stop(self) -> None:
        pass


class RayBackend:
    name = "ray"

    def __init__(self, address: str, num_gpus: int = 1):
        self.address, self.num_gpus = address, num_gpus

    def start(self, run_dir: Path):
        try:
            import ray
        except ImportError:
            return Unstarted(
                Ending(
                    None, reason="SUPPORTBOT_RAY_ADDRESS is set but Ray is not installed: pip install 'supportbot[ray]'"
                )
            )
        try:
            connect(self.address)
            gpus = ray.cluster_resources().get("GPU", 0)
        except ray.exceptions.AuthenticationError as exc:  # trying again would not help
            return Unstarted(
                Ending(
                    None,
                    reason=f"the Ray cluster at {self.address} refused the worker: {exc} "
                    "(RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the cluster's head)",
                )
            )
        except Exception as exc:  # noqa: BLE001 - unreachable, not a node of it, ...: said in the run's error
            first = (str(exc).splitlines() or [""])[0][:300]
            return Unstarted(
                Ending(
                    None,
                    lost=True,
                    reason=f"cannot reach the Ray cluster at {self.address}: {type(exc).__name__}: {first}",
                )
            )
        if gpus < self.num_gpus:
            return Unstarted(
                Ending(
                    None,
                    reason=f"the Ray cluster at {self.address} has {gpus:g} GPUs and a run asks "
                    f"for {self.num_gpus} (SUPPORTBOT_RAY_NUM_GPUS; 0 for a CPU cluster)",
                )
            )
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        compare = Path(config.get("compare_adapter") or "")
        serving = pack(compare) if config.get("compare_adapter") and compare.is_dir() else None
        actor = (
            ray.remote(RemoteRun)
            .options(num_gpus=self.num_gpus, num_cpus=1, max_restarts=0, max_task_retries=0)
            .remote(pack(run_dir, INPUTS), serving)
        )
        return RayRun(run_dir, actor)
