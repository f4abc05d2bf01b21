"""The Slack app: one Bolt App, listeners registered per area, one error handler."""

from __future__ import annotations

import logging

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

from .context import BotContext
from .listeners import actions, commands, datacheck, home, intake

log = logging.getLogger(__name__)


def web_client(settings) -> WebClient:
    """Web API client at SLACK_API_URL, retrying rate limits (429 + Retry-After) and server errors."""
    return WebClient(
        token=settings.slack_bot_token or None,
        base_url=settings.slack_api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=3), ServerErrorRetryHandler(max_retry_count=2)],
    )


def create_app(ctx: BotContext, client: WebClient | None = None) -> App:
    settings = ctx.settings
    client = client or web_client(settings)
    app = App(
        client=client,
        signing_secret=settings.slack_signing_secret or None,
        request_verification_enabled=bool(settings.slack_signing_secret),
        token_verification_enabled=False,
        name="supportbot",
        listener_executor=ctx.listener_executor,
    )
    identity = client.auth_test()
    ctx.bot_user_id, ctx.bot_id = identity.get("user_id"), identity.get("bot_id")
    for area in (intake, commands, actions, home, datacheck):
        area.register(app, ctx)

    @app.error
    def on_error(error, body, logger):
        # One place for unexpected failures: logged with the request type, never with message text or tokens.
        kind = body.get("type") or body.get("command") or "request"
        log.error("error while handling %s: %r", kind, error, exc_info=error)
        ctx.db_failed(error)  # the listener's thread: a database error gets it a fresh connection

    return app
