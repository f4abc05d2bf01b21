"""Requests as Slack sends them to an app: payload shapes and signatures.

Events are JSON; slash commands are form-encoded fields; interactions are a
form field `payload` holding JSON. Each builder returns (raw body, content type).
`signed_headers` signs a body the way Slack does (v0 HMAC-SHA256 over
"v0:{timestamp}:{body}" with the app's signing secret).
"""

from __future__ import annotations

import itertools
import json
import time
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

_event_ids = itertools.count(1)


def signed_headers(
    secret: str, body: str, content_type: str, *, timestamp: int | None = None, retry_num: int | None = None
) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": content_type,
        "x-slack-request-timestamp": str(timestamp),
        "x-slack-signature": SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body),
    }
    if retry_num:
        headers.update({"x-slack-retry-num": str(retry_num), "x-slack-retry-reason": "http_timeout"})
    return headers


def event_callback(event: dict, *, team_id: str = "T0STANDIN", event_id: str | None = None) -> tuple[str, str]:
    body = {
        "token": "verification-token-unused",
        "team_id": team_id,
        "api_app_id": "A0SUPPORTBOT",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):010d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team_id, "user_id": "U0BOT", "is_bot": True}],
    }
    return json.dumps(body), "application/json"


def message_event(channel: str, user: str, text: str, ts: str, **extra) -> dict:
    return {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "channel",
        **extra,
    }


def email_file(
    file_id: str, *, subject: str, sender: str, body: str | None, to: str = "support@example.com", sender_name: str = ""
) -> dict:
    """A Slack email file object (`filetype: email`). `body=None` leaves the body out, as some events do."""
    file = {
        "id": file_id,
        "created": int(time.time()),
        "name": subject,
        "title": subject,
        "mimetype": "text/html",
        "filetype": "email",
        "pretty_type": "Email",
        "mode": "email",
        "subject": subject,
        "from": [{"address": sender, "name": sender_name, "original": f"{sender_name} <{sender}>".strip()}],
        "to": [{"address": to, "name": "", "original": to}],
        "cc": [],
        "attachments": [],
        "headers": {"date": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())},
        "preview": (body or "")[:100],
        "preview_plain_text": (body or "")[:100],
    }
    if body is not None:
        file["plain_text"] = body
    else:
        file.pop("preview")
        file.pop("preview_plain_text")
    return file


def email_event(channel: str, ts: str, file: dict) -> dict:
    """A forwarded email: a file_share message from Slackbot with empty text."""
    return {
        "type": "message",
        "subtype": "file_share",
        "channel": channel,
        "user": "USLACKBOT",
        "text": "",
        "ts": ts,
        "event_ts": ts,
        "upload": False,
        "display_as_bot": False,
        "files": [file],
        "channel_type": "channel",
    }


def slash_command(
    command: str, text: str, *, user: str, channel: str, response_url: str, team_id: str = "T0STANDIN"
) -> tuple[str, str]:
    fields = {
        "token": "verification-token-unused",
        "team_id": team_id,
        "team_domain": "standin",
        "channel_id": channel,
        "channel_name": channel.lower(),
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": "A0SUPPORTBOT",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": f"{int(time.time())}.trigger",
    }
    return urlencode(fields), "application/x-www-form-urlencoded"


def interaction(payload: dict) -> tuple[str, str]:
    return urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded"


def block_action(
    action: dict, *, user: str, channel: str, message: dict, response_url: str, team_id: str = "T0STANDIN"
) -> tuple[str, str]:
    return interaction(
        {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": team_id},
            "api_app_id": "A0SUPPORTBOT",
            "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel, "is_ephemeral": False},
            "trigger_id": f"{int(time.time())}.trigger",
            "team": {"id": team_id, "domain": "standin"},
            "channel": {"id": channel, "name": channel.lower()},
            "message": message,
            "response_url": response_url,
            "actions": [{**action, "action_ts": f"{time.time():.6f}"}],
        }
    )


def message_shortcut(
    callback_id: str, *, user: str, channel: str, message: dict, team_id: str = "T0STANDIN"
) -> tuple[str, str]:
    return interaction(
        {
            "type": "message_action",
            "callback_id": callback_id,
            "trigger_id": f"{int(time.time())}.trigger",
            "message_ts": message["ts"],
            "user": {"id": user, "name": user.lower()},
            "team": {"id": team_id},
            "channel": {"id": channel, "name": channel.lower()},
            "message": message,
            "token": "unused",
            "response_url": "https://hooks.slack.com/unused",
        }
    )


def view_submission(view: dict, values: dict, *, user: str, team_id: str = "T0STANDIN") -> tuple[str, str]:
    return interaction(
        {
            "type": "view_submission",
            "team": {"id": team_id},
            "user": {"id": user, "name": user.lower()},
            "api_app_id": "A0SUPPORTBOT",
            "trigger_id": f"{int(time.time())}.trigger",
            "view": {**view, "id": "V0MODAL", "state": {"values": values}},
        }
    )
