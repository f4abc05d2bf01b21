"""Slack message metadata: how a restarted bot recognises what it already posted.

Every reply and every outbox message carries an event type and a key. After a crash between
posting and recording, the bot looks for that key in the channel or thread instead of posting
again.
"""

from __future__ import annotations

REPLY = "supportbot_reply"  # a thread reply to a collected message: {"message_id": ...}
OUTBOX = "supportbot_outbox"  # a relayed report or notice: {"key": ...}


def tag(event_type: str, **payload) -> dict:
    """The `metadata` argument of chat.postMessage."""
    return {"event_type": event_type, "event_payload": payload}


def find_tagged(messages: list[dict], event_type: str, field: str, value) -> dict | None:
    """The first of `messages` (conversations.history or .replies) tagged `event_type` with `field` == `value`."""
    for message in messages:
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") == event_type and (metadata.get("event_payload") or {}).get(field) == value:
            return message
    return None
