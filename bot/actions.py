"""Buttons, selects and the "Label this message" shortcut: corrections become human labels."""

from __future__ import annotations

import json
import logging

from storage import StorageError, labels, messages
from trainer.cleaning import clean_email

from . import blocks
from .context import BotContext
from .intake import refresh_reply

log = logging.getLogger(__name__)


def _choice(action: dict) -> tuple[int, str]:
    raw = action.get("value") or (action.get("selected_option") or {}).get("value") or "{}"
    data = json.loads(raw)
    return int(data["m"]), str(data["l"])


def record(ctx: BotContext, client, message_id: int, label: str, user: str, method: str, channel: str | None):
    try:
        labels.add_label(ctx.db(), message_id, label, by=user, method=method)
    except StorageError as exc:
        if channel:
            client.chat_postEphemeral(channel=channel, user=user, text=f"Could not save that label: {exc}")
        return
    ctx.submit(refresh_reply, ctx, client, message_id)


def register(app, ctx: BotContext) -> None:
    @app.action(blocks.CONFIRM_ACTION)
    @app.action(blocks.PICK_ACTION)
    def on_label_action(ack, body, action, client):
        ack()
        message_id, label = _choice(action)
        method = "button"
        record(ctx, client, message_id, label, body["user"]["id"], method, (body.get("channel") or {}).get("id"))

    @app.shortcut(blocks.SHORTCUT_CALLBACK)
    def on_shortcut(ack, shortcut, client):
        ack()
        channel = (shortcut.get("channel") or {}).get("id")
        target = shortcut.get("message") or {}
        user = shortcut["user"]["id"]
        if not ctx.is_intake_channel(channel):
            log.info("refused shortcut by %s in %s: not an intake channel", user, channel)
            client.chat_postEphemeral(channel=channel, user=user,
                                      text="This channel is not an intake channel; its messages are not collected.")
            return
        text = target.get("text") or ""
        message, _ = messages.add_message(  # labeling an older message collects it
            ctx.db(), source="slack_message", external_id=messages.slack_external_id(channel, target["ts"]),
            raw_body=text, clean_body=clean_email(text, redact_personal=ctx.settings.redact).body, sender=target.get("user"), channel=channel, ts=target["ts"],
            team=(shortcut.get("team") or {}).get("id"))
        names = [d.name for d in labels.list_label_defs(ctx.db())]
        client.views_open(trigger_id=shortcut["trigger_id"],
                          view=blocks.label_modal(message.id, names, message.clean_body or message.subject or ""))

    @app.view(blocks.MODAL_CALLBACK)
    def on_modal(ack, body, view, client):
        selected = view["state"]["values"]["label"]["choice"].get("selected_option")
        if not selected:
            ack(response_action="errors", errors={"label": "Pick a label"})
            return
        ack()
        message_id, label = _choice({"value": selected["value"]})
        record(ctx, client, message_id, label, body["user"]["id"], "shortcut", None)
