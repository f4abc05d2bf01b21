"""/retrain through a real Ray cluster: a local head (CPU only) started once for the module, the tiny model.

The head is started by this process with `ray.init` (ray.shutdown stops exactly what it started); the worker
connects to it by address, as it would to a GPU host. Ray places its head on this machine's own address.
"""

import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading

import pytest

# Ray reads its authentication settings once, when it is imported. The cluster below uses token authentication
# (as Ray sets up a new cluster) with a token of its own, kept out of ~/.ray; child processes (a `supportbot
# worker` below) inherit it, as a bot host is given the GPU host's token.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
if "ray" not in sys.modules:
    os.environ.update(AUTH)
ray = pytest.importorskip("ray", reason="Ray is not installed (the `ray` extra: pip install -e '.[ray]')")

from bot.runs.backend import backend_for  # noqa: E402
from bot.runs.local import LocalBackend  # noqa: E402
from bot.runs.ray import RayBackend, _why  # noqa: E402
from bot.settings import Settings  # noqa: E402
from storage import adapters, outbox, runs  # noqa: E402

from .test_bot import ADMIN  # noqa: E402
from .test_worker import FAST, deliver_all, queue, relay_running, system, wait_until  # noqa: E402,F401

# The tests that use the cluster are marked slow: they train five times through Ray, about two minutes on
# two CPUs (CI runs them with `make test`).


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster (2 CPUs, no GPU, no dashboard, 100 MB object store); its address."""
    if os.environ.get("RAY_AUTH_TOKEN") != AUTH["RAY_AUTH_TOKEN"]:
        pytest.skip("Ray was imported before this module could give it an authentication token")
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def on_ray(system, ray_head):
    """test_worker's bot, worker and relay, with the worker's settings pointing at the Ray head (CPU only)."""
    bot, worker, relay, settings = system
    settings = dataclasses.replace(settings, ray_address=ray_head, ray_num_gpus=0)
    worker.settings = settings
    said = []
    put = worker._say

    def record(key, payload, **kwargs):  # what the worker sends to the channel, in order
        said.append((key, payload))
        put(key, payload, **kwargs)

    worker._say = record
    return bot, worker, relay, settings, said


def streamed_metrics(settings, run_id):
    metrics = settings.runs_dir / f"run-{run_id}" / "metrics.jsonl"
    wait_until(
        lambda: metrics.exists() and '"train"' in metrics.read_text(), 120, "training metrics to come back from Ray"
    )


def long_run_training(bot, worker, settings):
    """Run 1, long, executing in a thread; returned once its first training metrics came back from Ray."""
    # No early stopping: the run must still be training when the test acts on it.
    queue(bot, {**FAST, "learning_rate": 1e-3, "epochs": 200, "early_stopping_patience": 0})
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    streamed_metrics(settings, 1)
    return thread


def test_backend_follows_the_settings():
    assert isinstance(backend_for(Settings()), LocalBackend)
    backend = backend_for(Settings(ray_address="gpu-host:6379", ray_num_gpus=2))
    assert isinstance(backend, RayBackend) and (backend.address, backend.num_gpus) == ("gpu-host:6379", 2)


def test_ray_errors_tell_lost_runs_from_failed_ones():
    from ray import exceptions as rx

    oom = _why(rx.OutOfMemoryError("Task was killed due to the node running low on memory."))
    assert not oom.lost and "low on memory" in oom.reason and "smaller batch" in oom.reason
    killed = _why(rx.ActorDiedError())
    assert killed.lost and "Ray worker" in killed.reason
    node = _why(rx.NodeDiedError("node 1 died"))
    assert node.lost and "node" in node.reason


@pytest.mark.slow
def test_retrain_through_ray_streams_progress_reports_and_promotes(on_ray):
    bot, worker, relay, settings, said = on_ray
    bot.command("/retrain", user=ADMIN)
    bot.db.execute(
        "UPDATE runs SET params = ? WHERE id = 1",
        [json.dumps({**FAST, "learning_rate": 1e-3, "epochs": 20, "early_stopping_patience": 0})],
    )  # seconds of steps: progress
    bot.db.conn.commit()
    with relay_running(relay):
        assert worker.run_once()
    run = runs.get_run(bot.db, 1)
    assert run.status == "succeeded", run.error
    run_dir = settings.runs_dir / "run-1"
    assert not (run_dir / "trainer.pid").exists()  # no local trainer: it ran on the cluster
    assert {"adapter", "result.json", "report.md", "report.png", "eval_predictions.jsonl"} <= {
        p.name for p in run_dir.iterdir()
    }
    current = adapters.current_adapter(bot.db)
    assert current.version == 1 and current.run_id == 1 and (current.path.endswith("run-1"))
    assert (settings.adapters_dir / "run-1" / "adapter_config.json").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["adapter_dir"] == str(run_dir / "adapter")
    # Progress moved while it trained: steps between the first and the last reached the channel.
    max_steps = result["training"]["max_steps"]
    steps = [p["text"] for k, p in said if k == "run:1:progress"]
    assert len(runs.run_metrics(bot.db, 1)) >= 3
    assert any(text not in ("Training run 1: 0%", "Training run 1: 100%") for text in steps), steps
    assert steps[-1] == "Training run 1: 100%" and max_steps > 1
    deliver_all(relay, bot.db)
    posts = bot.standin.calls_to("chat.postMessage")
    assert any(
        "finished" in c.params["text"] and "now serving: *adapter v1*" in json.dumps(c.params["blocks"]) for c in posts
    )
    assert bot.standin.calls_to("files.completeUploadExternal")  # the picture came back and was posted


@pytest.mark.slow
def test_cancel_through_ray_stops_the_run(on_ray):
    bot, worker, relay, settings, said = on_ray
    thread = long_run_training(bot, worker, settings)
    assert bot.command("/retrain", "cancel", user=ADMIN)["text"] == "Run 1 will stop at its next training step."
    thread.join(120)
    run = runs.get_run(bot.db, 1)
    assert not thread.is_alive() and run.status == "cancelled" and adapters.list_adapters(bot.db) == []
    deliver_all(relay, bot.db)
    assert any("Training run 1 cancelled" in c.params["text"] for c in bot.standin.calls_to("chat.postMessage"))


@pytest.mark.slow
def test_sigkill_of_the_ray_worker_interrupts_the_run_and_queues_it_again_once(on_ray):
    import psutil

    bot, worker, relay, settings, said = on_ray
    serving = adapters.register_adapter(bot.db, path="/prev", base_model="m", labels=["a"], metrics={})
    adapters.promote(bot.db, serving.version)
    thread = long_run_training(bot, worker, settings)
    actor_pid = ray.get(worker._handle.actor.pid.remote())
    trainers = psutil.Process(actor_pid).children()
    assert trainers and "trainer" in trainers[0].cmdline()
    os.kill(actor_pid, signal.SIGKILL)
    thread.join(120)
    run, again = runs.get_run(bot.db, 1), runs.get_run(bot.db, 2)
    assert run.status == "interrupted" and "Ray worker" in run.error
    assert again.status == "queued" and again.params == {**run.params, "retry_of": 1}
    assert adapters.current_adapter(bot.db).version == serving.version and len(adapters.list_adapters(bot.db)) == 1
    psutil.wait_procs(trainers, timeout=10)
    assert not any(t.is_running() and t.status() != psutil.STATUS_ZOMBIE for t in trainers)  # died with the actor
    assert "Queued again as run 2" in outbox.get(bot.db, "run:1:report").payload["blocks"][0]["text"]["text"]


@pytest.mark.slow
def test_too_few_gpus_on_the_cluster_fails_the_run_saying_so(on_ray):
    bot, worker, relay, settings, said = on_ray
    worker.settings = dataclasses.replace(settings, ray_num_gpus=1)
    queue(bot, FAST)
    assert worker.run_once()
    run = runs.get_run(bot.db, 1)
    assert run.status == "failed" and "has 0 GPUs and a run asks for 1" in run.error
    assert "SUPPORTBOT_RAY_NUM_GPUS" in run.error


@pytest.mark.slow
def test_supportbot_worker_with_the_address_set_trains_on_ray_and_a_sigterm_requeues(on_ray, env, ray_head):
    bot, worker, relay, settings, said = on_ray
    queue(bot, {**FAST, "learning_rate": 1e-3, "epochs": 200, "early_stopping_patience": 0})
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        cwd=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "SUPPORTBOT_RAY_ADDRESS": ray_head, "SUPPORTBOT_RAY_NUM_GPUS": "0"},
    )
    streamed_metrics(settings, 1)
    assert not (settings.runs_dir / "run-1" / "trainer.pid").exists()  # training on the cluster, not locally
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, process.stderr.read().decode()[-2000:]
    first, again = runs.get_run(bot.db, 1), runs.get_run(bot.db, 2)
    assert first.status == "interrupted" and again.status == "queued"
    assert again.params == {**first.params, "retry_of": 1}  # a stop re-queues it as a retry (one path for both)
    # The actor went with the worker: the cluster's CPU is free again.
    wait_until(lambda: ray.available_resources().get("CPU", 0) == 2, 30, "the run's actor to be released")
