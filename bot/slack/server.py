"""Running the app: Socket Mode (no public URL; the default when SLACK_APP_TOKEN is set) or HTTP.

HTTP mode serves Bolt's single endpoint, /slack/events, for events, commands
and interactivity, with request signatures verified.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import threading
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .app import create_app
from .context import BotContext
from ..settings import Settings

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of Slack requests (events plus retries plus commands)
    # overflowed it and the kernel reset connections (found by bench/ack_latency.py at 50 at once).
    request_queue_size = 256


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # request lines would log user ids and paths at INFO
        pass


MAX_BODY_BYTES = 1 << 20  # Slack's requests are a few KB; anything near this is not from Slack


DRAIN_LIMIT_BYTES = 16 << 20  # read (and drop) an oversized body up to this, so the client gets its 413


def guarded(app):
    """Refuse what is not a Slack request before Bolt parses it: oversized, non-UTF-8 or malformed bodies.

    Bolt would read any body into memory and answer bytes that are not UTF-8, or JSON it
    cannot parse, with a 500; these get a 413 or a 400 that says why.
    """
    def handle(environ, start_response):
        def refuse(status: str, reason: str):
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [reason.encode()]

        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return refuse("400 Bad Request", "bad Content-Length")
        if length > MAX_BODY_BYTES or length < 0:
            log.info("refused a %d-byte request (limit %d)", length, MAX_BODY_BYTES)
            if 0 < length <= DRAIN_LIMIT_BYTES:  # unread, the client would see a reset instead of the answer
                left = length
                while left > 0:
                    chunk = environ["wsgi.input"].read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            return refuse("413 Payload Too Large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return refuse("400 Bad Request", "request body is not UTF-8")
        if not well_formed(text, environ.get("CONTENT_TYPE", "")):
            return refuse("400 Bad Request", "request body is not well-formed JSON or form data")
        environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    return handle


def well_formed(text: str, content_type: str) -> bool:
    """JSON bodies parse; a form's `payload` field (interactions) parses as JSON."""
    try:
        if content_type.startswith("application/json"):
            json.loads(text)
        elif "payload=" in text:
            payload = parse_qs(text).get("payload")
            if payload:
                json.loads(payload[0])
    except ValueError:
        return False
    return True


def make_http_server(ctx: BotContext, host: str, port: int):
    """A threaded WSGI server for the app (port 0: any free port)."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    handler = guarded(SlackRequestHandler(create_app(ctx)))
    return make_server(host, port, handler, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)


def serve(settings: Settings, *, http: bool, host: str = "0.0.0.0", port: int = 3000) -> None:
    from .relay import relay_client
    from .scheduler import start_scheduler

    ctx = BotContext(settings)
    scheduler = start_scheduler(ctx, relay_client(settings))
    try:
        if http:
            server = make_http_server(ctx, host, port)
            # SIGTERM (a deploy, a restart): stop taking requests and finish the answers in progress;
            # queued ones are answered after the restart. Slack redelivers what went unacknowledged.
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
            log.info("supportbot listening on http://%s:%d/slack/events", host, server.server_port)
            server.serve_forever()
            log.info("stopping: finishing the answers in progress")
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            log.info("supportbot connecting to Slack in Socket Mode")
            SocketModeHandler(create_app(ctx), settings.slack_app_token).start()
    finally:
        scheduler.shutdown(wait=False)
        ctx.close(drop_queued=True)
