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
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers=payloads.signed_headers(SECRET, body, content_type))
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
        status, _ = signed_post(url, payloads.event_callback(payloads.message_event(INTAKE, AGENT, "still heard?", ts)),
                                timeout=5)
        assert status == 200
        status, _ = signed_post(url, payloads.slash_command("/stats", "", user=AGENT, channel=INTAKE,
                                                            response_url=bot.standin.response_url()), timeout=5)
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
