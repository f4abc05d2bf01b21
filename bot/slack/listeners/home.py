"""The App Home tab: the same numbers as /stats and the last training run."""

from __future__ import annotations

from ..context import BotContext
from .commands import stats_payload


def register(app, ctx: BotContext) -> None:
    @app.event("app_home_opened")
    def on_home(event, client):
        if event.get("tab", "home") != "home":
            return
        header = {"type": "header", "text": {"type": "plain_text", "text": "supportbot"}}
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": [header] + stats_payload(ctx)})
