"""Running the app: Socket Mode (no public URL; the default when SLACK_APP_TOKEN is set) or HTTP.

HTTP mode serves Bolt's single endpoint, /slack/events, for events, commands
and interactivity, with request signatures verified.
"""

from __future__ import annotations

import logging
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .app import create_app
from .context import BotContext
from .settings import Settings

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of Slack requests (events plus retries plus commands)
    # overflowed it and the kernel reset connections (found by bench/ack_latency.py at 50 at once).
    request_queue_size = 256


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # request lines would log user ids and paths at INFO
        pass


def make_http_server(ctx: BotContext, host: str, port: int):
    """A threaded WSGI server for the app (port 0: any free port)."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    handler = SlackRequestHandler(create_app(ctx))
    return make_server(host, port, handler, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)


def serve(settings: Settings, *, http: bool, host: str = "0.0.0.0", port: int = 3000) -> None:
    from .relay import relay_client
    from .scheduler import start_scheduler

    ctx = BotContext(settings)
    scheduler = start_scheduler(ctx, relay_client(settings))
    try:
        if http:
            server = make_http_server(ctx, host, port)
            log.info("supportbot listening on http://%s:%d/slack/events", host, server.server_port)
            server.serve_forever()
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            log.info("supportbot connecting to Slack in Socket Mode")
            SocketModeHandler(create_app(ctx), settings.slack_app_token).start()
    finally:
        scheduler.shutdown(wait=False)
        ctx.close()
