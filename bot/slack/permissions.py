"""Who may change what (README, "Security and data"): checked in every handler that changes data.

- Labeling a message (`/label`, the reply's buttons and picker, the digest's pickers, the shortcut)
  is for members of the message's channel: they can read it. Imported messages belong to no
  channel: only admins label them.
- Curating the label set (`/labels add|describe|retire`), the data check and its fixes,
  `/retrain` and `/model rollback` are for `SUPPORTBOT_ADMINS`.

Membership is asked of Slack (`conversations.members`) and remembered for a minute, so an
acknowledgement rarely waits for it. When Slack cannot be asked, the answer is no.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from types import SimpleNamespace

from slack_sdk.errors import SlackApiError

from storage import outbox, replies

from .context import BotContext

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request this user may not make. The message (mrkdwn, escaped) tells them why."""


def admins_line(ctx: BotContext) -> str:
    return ", ".join(f"<@{a}>" for a in ctx.settings.admins) or "nobody yet (set SUPPORTBOT_ADMINS)"


def require_admin(ctx: BotContext, user: str, what: str) -> None:
    """Refused unless `user` is an admin; `what` completes "Only admins can ..."."""
    if not ctx.is_admin(user):
        log.info("refused %s by %s: not an admin", what, user)
        raise Refused(f"Only admins can {what}. Admins: {admins_line(ctx)}.")


def is_member(ctx: BotContext, client, user: str, channel: str | None) -> bool:
    """Is `user` in `channel`, as Slack says now (within a minute)? False when Slack cannot tell."""
    if not channel:
        return False
    try:
        return user in ctx.channels.members(client, channel)
    except (SlackApiError, OSError) as exc:
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else str(exc)
        log.warning("cannot list the members of %s: %s", channel, error)
        return False


def is_private(ctx: BotContext, client, channel: str | None) -> bool:
    """Is `channel` private (or a DM)? True when Slack cannot tell: text stays hidden rather than leak."""
    if not channel:
        return False
    try:
        return ctx.channels.private(client, channel)
    except (SlackApiError, OSError) as exc:
        log.warning("cannot look up channel %s: %s", channel, exc)
        return True


def can_read(ctx: BotContext, client, user: str, message) -> bool:
    """May `user` see this message's text? Members of its channel; admins for imported messages."""
    if message.channel is None:
        return ctx.is_admin(user)
    return is_member(ctx, client, user, message.channel)


def require_labeler(ctx: BotContext, client, user: str, message) -> None:
    """Refused unless `user` may label `message` (README: members of its intake channel)."""
    if message.channel is None:
        if ctx.is_admin(user):
            return
        log.info("refused label by %s on imported message %d: not an admin", user, message.id)
        raise Refused("Imported messages are labeled by admins only. Admins: " + admins_line(ctx) + ".")
    if not ctx.is_intake_channel(message.channel):
        log.info("refused label by %s: channel %s is not an intake channel", user, message.channel)
        raise Refused(f"<#{message.channel}> is not an intake channel, so its messages are not labeled here.")
    if not is_member(ctx, client, user, message.channel):
        log.info("refused label by %s on message %d: not a member of %s", user, message.id, message.channel)
        raise Refused(
            f"Only members of <#{message.channel}> can label its messages, and you are not in it "
            "(or Slack could not confirm it: try again)."
        )


def require_channel_labeler(ctx: BotContext, client, user: str, channel: str | None) -> None:
    """`require_labeler` for any message of `channel` (checked before looking a message up, so an outsider
    does not even learn whether it was collected)."""
    require_labeler(ctx, client, user, SimpleNamespace(id=0, channel=channel))


def require_clicked(db, body: dict, message_id: int) -> None:
    """Refused unless `message_id` belongs to the message that was clicked: the bot's reply to that
    message, or a digest listing it, in the channel the click came from."""
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts")
    reply = replies.get_reply(db, message_id)
    if reply and channel and (reply["channel"], reply["ts"]) == (channel, ts):
        return
    sent = outbox.find_sent(db, channel, ts) if channel and ts else None
    if sent and message_id in (sent.payload.get("message_ids") or []):
        return
    log.info(
        "refused click by %s: message %s is not under %s/%s",
        (body.get("user") or {}).get("id"),
        message_id,
        channel,
        ts,
    )
    raise Refused("That button does not belong to this message; nothing was changed.")


def _seal_of(ctx: BotContext, user: str, action_id: str, data: dict) -> str:
    key = hmac.new(
        ctx.settings.slack_bot_token.encode(), b"supportbot: buttons shown to one person", hashlib.sha256
    ).digest()
    shown = json.dumps(
        [user, action_id, {k: v for k, v in data.items() if k != "s"}], sort_keys=True, separators=(",", ":")
    )
    digest = hmac.new(key, shown.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def seal(ctx: BotContext, user: str, action_id: str, data: dict) -> dict:
    """`data` (a button's or option's value) with a seal only this bot can make, for `action_id` shown to `user`.

    For buttons in a message only one person sees (the data check's, answered ephemerally): Slack sends
    a click on those back without the message, so it cannot be matched to a message the bot recorded as
    a reply's click is (`require_clicked`); the seal says the bot put this value under this user's eyes.
    """
    return {**data, "s": _seal_of(ctx, user, action_id, data)}


def require_sealed(ctx: BotContext, user: str, action_id: str, data) -> None:
    """Refused unless `data` carries the seal `seal` gave it for `action_id`, shown to `user`."""
    if isinstance(data, dict) and hmac.compare_digest(str(data.get("s", "")), _seal_of(ctx, user, action_id, data)):
        return
    log.info("refused %s by %s: not a button the bot showed them", action_id, user)
    raise Refused("That button is not from a data check shown to you; nothing was changed. Run `/datacheck` again.")


def require_reader(ctx: BotContext, client, user: str, message) -> None:
    """Refused unless `user` may read `message` (`can_read`): changing what trains on it starts with seeing it."""
    if can_read(ctx, client, user, message):
        return
    log.info("refused a data-check fix by %s on message %d: not a member of %s", user, message.id, message.channel)
    raise Refused(
        f"Message {message.id} is in <#{message.channel}>, which you are not in (or Slack could not "
        "confirm it: try again); nothing was changed."
    )


def refuse(client, body: dict, user: str, text: str, respond=None) -> None:
    """Tell only `user` why nothing happened (an ephemeral message where they clicked)."""
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    try:
        if respond is not None and body.get("response_url"):
            respond(response_type="ephemeral", replace_original=False, text=text)
        elif channel:
            client.chat_postEphemeral(channel=channel, user=user, text=text)
        else:  # a modal: the user gets a direct message from the bot
            client.chat_postMessage(channel=user, text=text)
    except SlackApiError as exc:
        log.warning("could not tell %s why a request was refused: %s", user, exc.response.get("error"))


def hidden(message) -> str:
    """What is shown instead of a message's text to someone who cannot read it."""
    where = f"<#{message.channel}>" if message.channel else "an import"
    return f"(message {message.id} from {where}: its text is shown only to members of that channel)"
