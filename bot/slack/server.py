"""Running the app: Socket Mode (no public URL; the default when SLACK_APP_TOKEN is set) or HTTP.

HTTP mode serves Bolt's single endpoint, /slack/events, for events, commands
and interactivity, with request signatures verified, on waitress (a production
WSGI server; one process, since the classifier and the schedule live in it)
behind `guarded`, the middleware that refuses what is not a Slack request.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import threading
import time
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier

from ..settings import Settings
from .app import create_app
from .context import BotContext

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Slack's requests are a few KB; anything near this is not from Slack
READ_LIMIT_BYTES = 16 << 20  # the server reads a body up to this (so the guard can answer 413), refuses above
HTTP_THREADS = 16  # requests handled at once: each only verifies, acknowledges and hands work to the pools
# Idle or half-sent connections must not starve Slack's requests (waitress's defaults: 100 connections, each
# kept 120 s idle). Slack sends a request in one go and waits 3 s for the answer, so a connection idle for
# CHANNEL_TIMEOUT_S is not Slack's; it is closed (checked every CLEANUP_INTERVAL_S). Up to CONNECTION_LIMIT are
# open at once; beyond that new ones wait in the listen backlog until idle ones are closed.
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT_S = 10
CLEANUP_INTERVAL_S = 2


def guarded(app, signing_secret: str = ""):
    """Refuse what is not a Slack request before Bolt parses it: oversized, non-UTF-8, unsigned or malformed.

    Bolt would read any body into memory and answer bytes that are not UTF-8, or JSON it
    cannot parse, with a 500; these get a 413 or a 400 that says why. The signature is checked
    (with `signing_secret`, when there is one) before the body is parsed, so nobody without the
    secret gets the parser to work on a body of their making (a 401).
    """
    verifier = SignatureVerifier(signing_secret) if signing_secret else None

    def handle(environ, start_response):
        def refuse(status: str, reason: str):
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [reason.encode()]

        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return refuse("400 Bad Request", "bad Content-Length")
        if length > MAX_BODY_BYTES or length < 0:  # the server has read it already: the client gets the answer
            log.info("refused a %d-byte request (limit %d)", length, MAX_BODY_BYTES)
            return refuse("413 Payload Too Large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return refuse("400 Bad Request", "request body is not UTF-8")
        if verifier and not signed(verifier, text, environ):
            return refuse("401 Unauthorized", "missing, wrong or expired Slack signature")
        if not well_formed(text, environ.get("CONTENT_TYPE", "")):
            return refuse("400 Bad Request", "request body is not well-formed JSON or form data")
        environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    return handle


def well_formed(text: str, content_type: str) -> bool:
    """JSON bodies parse; a form's `payload` field (interactions) parses as JSON (not nested too deeply)."""
    try:
        if content_type.startswith("application/json"):
            json.loads(text)
        elif "payload=" in text:
            payload = parse_qs(text).get("payload")
            if payload:
                json.loads(payload[0])
    except (ValueError, RecursionError):
        return False
    return True


def signed(verifier, text: str, environ) -> bool:
    """Does the request carry a valid Slack signature, less than 5 minutes old?"""
    try:
        return verifier.is_valid(
            text, environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP"), environ.get("HTTP_X_SLACK_SIGNATURE")
        )
    except ValueError:  # a timestamp that is not a number
        return False


def enough_file_descriptors(needed: int) -> None:
    """Raise this process's open-file limit to `needed` when the hard limit allows (many systems start at 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning("open-file limit is %d: fewer than %d connections can be open at once", target, needed)


class HttpServer:
    """waitress serving a WSGI app, with the start and stop the bot, the tests and the benchmarks use."""

    def __init__(self, app, host: str, port: int):
        from waitress.server import create_server

        enough_file_descriptors(CONNECTION_LIMIT + 256)  # the connections, plus the database, models and logs
        # poll, not select: select cannot watch descriptors above 1024.
        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=HTTP_THREADS,
            backlog=256,
            max_request_body_size=READ_LIMIT_BYTES,
            clear_untrusted_proxy_headers=True,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT_S,
            cleanup_interval=CLEANUP_INTERVAL_S,
            asyncore_use_poll=True,
        )
        self.server_port = int(self._server.effective_port)  # waitress gives it as text

    def serve_forever(self) -> None:
        self._server.run()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop taking requests, let those in progress finish (up to `timeout`), then close the connections."""
        server = self._server
        server.accepting = False
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)
        deadline = time.monotonic() + 1.0  # answers are written by the server's loop: let it send them
        while time.monotonic() < deadline and any(
            getattr(channel, "total_outbufs_len", 0) for channel in list(server._map.values())
        ):
            time.sleep(0.01)
        for channel in list(server._map.values()):  # an empty map ends serve_forever
            channel.handle_close()


def make_http_server(ctx: BotContext, host: str, port: int) -> HttpServer:
    """The guarded app on waitress (port 0: any free port)."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    return HttpServer(guarded(SlackRequestHandler(create_app(ctx)), ctx.settings.slack_signing_secret), host, port)


def serve(settings: Settings, *, http: bool, host: str = "0.0.0.0", port: int = 3000) -> None:
    from .relay import relay_client
    from .scheduler import start_scheduler

    ctx = BotContext(settings)
    scheduler = start_scheduler(ctx, relay_client(settings))
    ctx.submit(ctx.warm_up)  # the serving model is checked and loaded at start, not by the first message
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
