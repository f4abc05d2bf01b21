"""Faults the bot lives through: a full disk, a read-only database, a corrupt adapter, idle connections."""

import json
import socket
import threading
import time
import urllib.request

import pytest

from slack_standin import payloads
from storage import messages

from .test_bot import AGENT, INTAKE, SECRET, bot  # noqa: F401

# -- idle connections do not starve the HTTP server ----------------------------------------------------


def signed_post(url, body_and_type, timeout):
    body, content_type = body_and_type
    request = urllib.request.Request(
        url, data=body.encode(), method="POST", headers=payloads.signed_headers(SECRET, body, content_type)
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def half_sent(port):
    """A connection that sent half a request's headers and then went quiet."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
    return conn


@pytest.fixture
def http_bot(bot):  # noqa: F811
    from bot.slack.server import make_http_server

    server = make_http_server(bot.ctx, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    yield bot, server
    server.shutdown()
    serving.join(10)


def test_120_idle_half_sent_connections_do_not_starve_a_signed_event_or_stats(http_bot):
    bot, server = http_bot
    url = f"http://127.0.0.1:{server.server_port}/slack/events"
    idle = [half_sent(server.server_port) for _ in range(120)]
    try:
        time.sleep(0.5)  # the server has taken them all in
        started = time.monotonic()
        ts = bot.next_ts()
        status, _ = signed_post(
            url, payloads.event_callback(payloads.message_event(INTAKE, AGENT, "still heard?", ts)), timeout=5
        )
        assert status == 200
        status, _ = signed_post(
            url,
            payloads.slash_command("/stats", "", user=AGENT, channel=INTAKE, response_url=bot.standin.response_url()),
            timeout=5,
        )
        assert status == 200 and time.monotonic() - started < 5
        bot.settle()
        assert messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)) is not None
    finally:
        for conn in idle:
            conn.close()


def test_a_half_sent_connection_is_closed_after_the_channel_timeout(bot, monkeypatch):  # noqa: F811
    from bot.slack import server as server_module

    monkeypatch.setattr(server_module, "CHANNEL_TIMEOUT_S", 1)
    monkeypatch.setattr(server_module, "CLEANUP_INTERVAL_S", 1)
    server = server_module.make_http_server(bot.ctx, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    conn = half_sent(server.server_port)
    try:
        started = time.monotonic()
        assert conn.recv(1024) == b""  # the server closed it (recv waits up to the socket's 5 s timeout)
        assert time.monotonic() - started < 4.5
    finally:
        conn.close()
        server.shutdown()
        serving.join(10)


# -- a full disk loses no acknowledged event -----------------------------------------------------------


def post_event(bot, text):  # noqa: F811
    ts = bot.next_ts()
    response = bot.event(payloads.message_event(INTAKE, AGENT, text, ts))
    return ts, response.status


def stored(bot, ts):  # noqa: F811
    return messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts)) is not None


def test_full_disk_events_are_held_in_memory_refused_beyond_the_limit_then_stored(bot, monkeypatch):  # noqa: F811
    """The database and the spool file both fail as a full disk fails: acknowledged events wait in memory,
    one more than the limit is refused unacknowledged, and all acknowledged ones are stored afterwards."""
    import errno
    import sqlite3

    from bot.slack import spool as spool_module
    from bot.slack.listeners.intake import replay_spool
    from storage import messages as stored_messages

    real_add, real_write = stored_messages.add_message, spool_module._write_all

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    def half_written(fd, data):
        real_write(fd, data[: len(data) // 2])  # what a filling disk does: part of the line, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    bot.ctx.intake_spool().hold_limit = 5
    monkeypatch.setattr(stored_messages, "add_message", disk_full)
    monkeypatch.setattr(spool_module, "_write_all", half_written)
    acknowledged = []
    for i in range(5):
        ts, status = post_event(bot, f"sent while the disk was full {i}")
        assert status == 200
        acknowledged.append(ts)
        bot.settle()
    assert bot.ctx.intake_spool().held() == 5
    _, status = post_event(bot, "one too many")
    assert status == 503  # not acknowledged: Slack delivers it again later
    assert replay_spool(bot.ctx, bot.app.client) == 0 and bot.ctx.intake_spool().held() == 5  # still full: kept

    monkeypatch.setattr(spool_module, "_write_all", real_write)  # the spool file can take them again
    assert replay_spool(bot.ctx, bot.app.client) == 0
    assert bot.ctx.intake_spool().held() == 0 and bot.ctx.intake_spool().pending() == 5  # moved to disk, whole lines
    monkeypatch.setattr(stored_messages, "add_message", real_add)  # and the database too
    assert replay_spool(bot.ctx, bot.app.client) == 5
    bot.settle()
    assert all(stored(bot, ts) for ts in acknowledged) and bot.ctx.intake_spool().pending() == 0
    answered = {c.params.get("thread_ts") for c in bot.standin.wait_for("chat.postMessage", count=5)}
    assert set(acknowledged) <= answered
    ts, status = post_event(bot, "after the disk recovered")
    bot.settle()
    assert status == 200 and stored(bot, ts)


def test_a_spool_line_cut_by_a_full_disk_never_swallows_the_next(tmp_path, monkeypatch):
    import errno

    from bot.slack import spool as spool_module

    spool = spool_module.Spool(tmp_path / "spool.jsonl")
    spool.append({"n": 1})
    real_write = spool_module._write_all

    def half_written(fd, data):
        real_write(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write_all", half_written)
    assert spool.keep({"n": 2}) == "held"
    monkeypatch.setattr(spool_module, "_write_all", real_write)
    spool.append({"n": 3})
    seen = []
    assert spool.replay(seen.append) == 3
    assert seen == [{"n": 1}, {"n": 3}, {"n": 2}]


def mount_small_tmpfs(folder, size="3m"):
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {result.stderr.strip()}")


@pytest.fixture
def bot_on_small_disk(env, request):
    """The bot with its data folder on a 3 MB filesystem of its own."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    folder = env / "data"
    mount_small_tmpfs(folder)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))
    return request.getfixturevalue("bot")  # torn down before the filesystem is unmounted


def fill(folder):
    """Fill the filesystem at `folder` to the last byte; returns the filler file."""
    import os

    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_on_a_real_full_filesystem_no_acknowledged_event_is_lost(bot_on_small_disk):
    bot = bot_on_small_disk
    from bot.slack.listeners.intake import replay_spool

    folder = bot.ctx.settings.data_dir
    bot.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # new writes need new space
    filler = fill(folder)
    acknowledged = []
    for i in range(5):
        ts, status = post_event(bot, f"full disk {i} " + "x" * 2000)
        assert status == 200
        acknowledged.append(ts)
    bot.settle()
    waiting = bot.ctx.intake_spool().pending()
    assert waiting > 0  # the disk really was full
    assert sum(stored(bot, ts) for ts in acknowledged) + waiting == 5  # each one stored or waiting
    filler.unlink()
    replay_spool(bot.ctx, bot.app.client)
    bot.settle()
    assert all(stored(bot, ts) for ts in acknowledged) and bot.ctx.intake_spool().pending() == 0


# -- a read-only database recovers without a restart ---------------------------------------------------


def test_connections_opened_while_the_database_was_read_only_are_opened_again(bot, monkeypatch):  # noqa: F811
    import sqlite3

    from sqlite_utils import Database

    from bot.slack import context
    from bot.slack.listeners.intake import replay_spool

    real_open = context.open_db
    monkeypatch.setattr(context, "open_db", lambda path: Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True)))
    bot.ctx._local = threading.local()  # every thread opens its connection from now on: read-only
    early = [post_event(bot, f"while read-only {i}")[0] for i in range(3)]
    bot.settle()
    assert bot.ctx.intake_spool().pending() == 3 and not any(stored(bot, ts) for ts in early)
    replayer = __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=1)  # the scheduler's thread
    assert replayer.submit(replay_spool, bot.ctx, bot.app.client).result() == 0

    monkeypatch.setattr(context, "open_db", real_open)  # the file is writable again
    assert replayer.submit(replay_spool, bot.ctx, bot.app.client).result() == 3  # the same thread drains it
    replayer.shutdown()
    later = [post_event(bot, f"writable again {i}")[0] for i in range(12)]
    bot.settle()
    assert all(stored(bot, ts) for ts in early + later)  # every listener thread writes again
    assert bot.ctx.intake_spool().pending() == 0


# -- a corrupt serving adapter: the bot still answers, says so once, and /model tells the truth ----------


def build_head_adapter(folder, encoder_dir, rows=3, hidden=32):
    """A head adapter on the tiny encoder, as a run writes one (LoRA weights, head, supportbot.json)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from classifier.head import save_head
    from classifier.models import load_base_model
    from classifier.prompts import LabelInfo, PromptSpec

    from .conftest import TOY_WORDS

    folder.mkdir(parents=True, exist_ok=True)
    get_peft_model(
        load_base_model(encoder_dir, device="cpu"), LoraConfig(r=4, target_modules=["query", "value"])
    ).save_pretrained(folder)
    torch.manual_seed(0)
    save_head(torch.nn.Linear(hidden, rows), folder)
    spec = PromptSpec(tuple(LabelInfo(n, f"{n} messages") for n in TOY_WORDS), False, 2000)
    meta = {
        "base_model": encoder_dir,
        "method": "head",
        "prompt": spec.to_dict(),
        "head": {"labels": spec.names, "pooling": "mean", "max_length": 64},
    }
    (folder / "supportbot.json").write_text(json.dumps(meta))
    return folder


def corrupt(folder, kind):
    import shutil

    weights, head = folder / "adapter_model.safetensors", folder / "head.safetensors"
    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "garbage head":
        head.write_bytes(b"\x13\x37" * 500)
    elif kind == "tampered head":  # a valid file, other numbers: only the checksum tells
        import torch

        from classifier.head import save_head

        save_head(torch.nn.Linear(32, 3), folder)
    elif kind == "bad metadata":
        (folder / "supportbot.json").write_text("{not json")
    elif kind == "deleted folder":
        shutil.rmtree(folder)
    else:
        raise AssertionError(kind)


def serve_adapter(db, folder, encoder_dir):
    from storage import adapters, served

    adapter = adapters.register_adapter(
        db,
        path=str(folder),
        base_model=encoder_dir,
        labels=["complaint", "question", "feedback"],
        metrics={"accuracy": 0.9, "macro_f1": 0.9, "n": 6},
    )
    adapters.promote(db, adapter.version)
    served.set_served(db, "adapter", adapter_version=adapter.version, reason="test", chosen_by="gate")
    return adapter


def label_two_each(db):
    from storage import labels

    for i, (text, label) in enumerate(
        (
            ("broken refund", "complaint"),
            ("angry late", "complaint"),
            ("how when", "question"),
            ("what which", "question"),
            ("love great", "feedback"),
            ("thanks nice", "feedback"),
        )
    ):
        m, _ = messages.add_message(db, source="slack_message", external_id=f"seed-{i}", raw_body=text, clean_body=text)
        labels.add_label(db, m.id, label, by="U1", method="cli")


@pytest.fixture
def adapter_bot(bot, tiny_encoder_dir, monkeypatch):  # noqa: F811
    """The bot with a report channel, the embeddings able to serve, and a head adapter v1 registered to serve."""
    import dataclasses

    from classifier import embeddings

    from .test_serving import fake_embed

    monkeypatch.setattr(embeddings, "embed", fake_embed)
    bot.ctx.settings = dataclasses.replace(bot.ctx.settings, report_channel="C0REPORTS")
    label_two_each(bot.db)
    folder = build_head_adapter(bot.ctx.settings.adapters_dir / "run-1", tiny_encoder_dir)
    serve_adapter(bot.db, folder, tiny_encoder_dir)
    return bot, folder


def answer_model(bot, text):  # noqa: F811
    from storage import predictions

    ts = post_event(bot, text)[0]
    bot.settle()
    message = messages.find_message(bot.db, messages.slack_external_id(INTAKE, ts))
    assert any(c.params.get("thread_ts") == ts for c in bot.standin.calls_to("chat.postMessage"))  # answered
    return predictions.latest_prediction(bot.db, message.id).model


def unusable_reports(bot):  # noqa: F811
    from storage import outbox

    found = [outbox.get(bot.db, "adapter:1:unusable")]
    return [item for item in found if item is not None and item.channel == "C0REPORTS"]


def test_an_intact_adapter_serves(adapter_bot):
    bot, _ = adapter_bot
    assert answer_model(bot, "my parcel arrived broken") == "adapter v1"
    assert bot.command("/model")["text"].startswith("*Serving:* adapter v1")
    assert unusable_reports(bot) == []


@pytest.mark.parametrize(
    "kind", ["truncated weights", "garbage head", "tampered head", "bad metadata", "deleted folder"]
)
def test_a_corrupt_adapter_gives_way_the_bot_answers_and_says_so_once(adapter_bot, kind):
    bot, folder = adapter_bot
    corrupt(folder, kind)
    assert answer_model(bot, "my parcel arrived broken") == "embeddings"
    shown = bot.command("/model")["text"]
    assert shown.startswith("*Serving:* embeddings") and "adapter v1 cannot serve" in shown
    assert "v1: accuracy 90.0%, run None (current, cannot serve)" in shown
    assert len(unusable_reports(bot)) == 1
    text = unusable_reports(bot)[0].payload["blocks"][0]["text"]["text"]
    assert "Adapter v1 cannot serve" in text and "embeddings answers instead" in text
    bot.ctx._classifier = None  # a restart: the adapter is checked again, the channel is not told again
    assert answer_model(bot, "how do I reset my password") == "embeddings"
    assert len(unusable_reports(bot)) == 1 and unusable_reports(bot)[0].version == 1


# The same damage in an adapter registered that way (its checksum matches): the files are read through.
@pytest.mark.parametrize(
    "kind", ["truncated weights", "garbage head", "bad metadata", "too few head rows", "head of another hidden size"]
)
def test_an_adapter_registered_broken_never_serves(workspace_for_adapters, tiny_encoder_dir, kind):
    from bot.serving import ServedClassifier

    settings, db, tmp_path = workspace_for_adapters
    if kind == "too few head rows":
        folder = build_head_adapter(tmp_path / "adapter", tiny_encoder_dir, rows=2)
    elif kind == "head of another hidden size":
        folder = build_head_adapter(tmp_path / "adapter", tiny_encoder_dir, hidden=16)
    else:
        folder = build_head_adapter(tmp_path / "adapter", tiny_encoder_dir)
        corrupt(folder, kind)
    serve_adapter(db, folder, tiny_encoder_dir)
    told = []
    classifier = ServedClassifier(settings, on_unusable=lambda *args: told.append(args))
    classifier.refit(db)
    classifier.sync(db)
    assert classifier.state.kind == "embeddings" and "adapter v1 cannot serve" in classifier.state.note
    assert classifier.classify("broken refund").model == "embeddings"
    classifier.sync(db)
    assert told == [(1, classifier.unusable[1], "embeddings")]  # once
    classifier.close()


def test_the_adapter_serving_before_keeps_serving_when_the_next_one_is_corrupt(
    workspace_for_adapters, tiny_encoder_dir
):
    from bot.serving import ServedClassifier

    settings, db, tmp_path = workspace_for_adapters
    serve_adapter(db, build_head_adapter(tmp_path / "v1", tiny_encoder_dir), tiny_encoder_dir)
    classifier = ServedClassifier(settings)
    classifier.refit(db)
    classifier.sync(db)
    assert classifier.state.name == "adapter v1"
    broken = build_head_adapter(tmp_path / "v2", tiny_encoder_dir, hidden=16)  # fails once loaded
    serve_adapter(db, broken, tiny_encoder_dir)
    classifier.sync(db)
    assert classifier.state.name == "adapter v1" and "adapter v2 cannot serve" in classifier.state.note
    assert classifier.classify("how when where").model == "adapter v1"
    classifier.close()


@pytest.fixture
def workspace_for_adapters(env, tiny_model_dir, monkeypatch):
    from bot.settings import load_settings
    from classifier import embeddings
    from storage import labels, open_db

    from .test_serving import fake_embed

    monkeypatch.setattr(embeddings, "embed", fake_embed)
    settings = load_settings(
        {
            "SUPPORTBOT_DATA_DIR": str(env / "data"),
            "SUPPORTBOT_BASE_MODEL": tiny_model_dir,
            "SUPPORTBOT_ZERO_SHOT_MODEL": tiny_model_dir,
        },
        env_file=None,
    )
    db = open_db(settings.db_path)
    for name in ("complaint", "question", "feedback"):
        labels.add_label_def(db, name, f"{name} messages")
    label_two_each(db)
    return settings, db, env
