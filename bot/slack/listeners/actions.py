"""Buttons, selects and the "Label this message" shortcut: corrections become human labels.

Every one checks who is asking (`permissions`): members of the message's channel label it,
and a click counts only for the message it was shown under.
"""

from __future__ import annotations

import json
import logging

from storage import StorageError, labels, messages

from .. import blocks, mrkdwn
from ..context import BotContext
from ..permissions import Refused, refuse, require_channel_labeler, require_clicked, require_labeler
from .intake import refresh_reply

log = logging.getLogger(__name__)


def _choice(action: dict) -> tuple[int, str]:
    raw = action.get("value") or (action.get("selected_option") or {}).get("value") or "{}"
    try:
        data = json.loads(raw)
        return int(data["m"]), str(data["l"])
    except (ValueError, KeyError, TypeError):
        raise Refused("That control carries no message to label; nothing was changed.") from None


def record(
    ctx: BotContext, client, message_id: int, label: str, user: str, method: str, body: dict, respond=None
) -> None:
    """Save `user`'s label for a message they may label, or tell them privately why not."""
    try:
        message = messages.get_message(ctx.db(), message_id)
        require_labeler(ctx, client, user, message)
        labels.add_label(ctx.db(), message_id, label, by=user, method=method)
    except Refused as exc:
        refuse(client, body, user, str(exc), respond)
        return
    except StorageError as exc:
        refuse(client, body, user, f"Could not save that label: {mrkdwn.escape(exc)}", respond)
        return
    ctx.submit(refresh_reply, ctx, client, message_id)


def register(app, ctx: BotContext) -> None:
    @app.action(blocks.CONFIRM_ACTION)
    @app.action(blocks.PICK_ACTION)
    def on_label_action(ack, body, action, client, respond):
        ack()
        user = body["user"]["id"]
        try:
            message_id, label = _choice(action)
            require_clicked(ctx.db(), body, message_id)
        except Refused as exc:
            refuse(client, body, user, str(exc), respond)
            return
        record(ctx, client, message_id, label, user, "button", body, respond)

    @app.shortcut(blocks.SHORTCUT_CALLBACK)
    def on_shortcut(ack, shortcut, client):
        ack()
        channel = (shortcut.get("channel") or {}).get("id")
        target = shortcut.get("message") or {}
        user = shortcut["user"]["id"]
        if not ctx.is_intake_channel(channel):
            log.info("refused shortcut by %s in %s: not an intake channel", user, channel)
            client.chat_postEphemeral(
                channel=channel,
                user=user,
                text="This channel is not an intake channel; its messages are not collected.",
            )
            return
        try:  # membership first: an outsider can neither collect nor label a message
            require_channel_labeler(ctx, client, user, channel)
        except Refused as exc:
            client.chat_postEphemeral(channel=channel, user=user, text=str(exc))
            return
        text = target.get("text") or ""
        message, _ = messages.add_message(  # labeling an older message collects it
            ctx.db(),
            source="slack_message",
            external_id=messages.slack_external_id(channel, target["ts"]),
            raw_body=text,
            clean_body=ctx.clean(text),
            sender=target.get("user"),
            channel=channel,
            ts=target["ts"],
            team=(shortcut.get("team") or {}).get("id"),
        )
        names = [d.name for d in labels.list_label_defs(ctx.db())]
        client.views_open(
            trigger_id=shortcut["trigger_id"],
            view=blocks.label_modal(message.id, names, message.clean_body or message.subject or ""),
        )

    @app.view(blocks.MODAL_CALLBACK)
    def on_modal(ack, body, view, client):
        selected = view["state"]["values"]["label"]["choice"].get("selected_option")
        if not selected:
            ack(response_action="errors", errors={"label": "Pick a label"})
            return
        try:
            message_id, label = _choice({"value": selected["value"]})
            opened_for = int(json.loads(view.get("private_metadata") or "{}").get("m", -1))
            if opened_for != message_id:
                raise Refused("That choice belongs to another message; nothing was changed.")
            require_labeler(ctx, client, body["user"]["id"], messages.get_message(ctx.db(), message_id))
        except (Refused, StorageError, ValueError) as exc:
            ack(response_action="errors", errors={"label": str(exc)[:150]})  # shown to the user, in the modal
            return
        ack()
        record(ctx, client, message_id, label, body["user"]["id"], "shortcut", body)
