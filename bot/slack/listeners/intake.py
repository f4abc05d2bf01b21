"""Intake: channel messages and forwarded emails become stored messages, classified and answered in thread.

Slack acknowledges events for us before this listener runs (Bolt's default). The
listener only hands the event to the intake pool (storing it: files.info, cleaning,
the database write), and the classification goes to the work pool: a listener thread,
which acknowledgements need, is never held by a message. A redelivered event
(X-Slack-Retry-Num) finds the message already stored and answered. Answers carry
Slack message metadata; a bot restarted mid-answer settles what was in doubt and a
sweep answers any collected message left without one (`recover_replies`, `answer_backlog`).
"""

from __future__ import annotations

import logging

from slack_bolt import BoltResponse
from slack_sdk.errors import SlackApiError

from storage import labels, messages, predictions, replies
from textprep.text import EmptyText, require_text

from .. import blocks, metadata, mrkdwn
from ..context import BotContext
from ..spool import RETRYABLE

log = logging.getLogger(__name__)

NEW_MESSAGE_SUBTYPES = (None, "file_share", "thread_broadcast")
NOTHING_TO_CLASSIFY = (
    "Nothing to classify: this message has no text (a blank subject and body). "
    "It gets no label unless someone gives it one."
)


def email_file(event: dict) -> dict | None:
    for f in event.get("files") or []:
        if f.get("filetype") == "email" or f.get("mode") == "email":
            return f
    return None


def email_parts(file: dict) -> tuple[str | None, str | None, str]:
    """(subject, sender, body) of a Slack email file object."""
    senders = file.get("from") or []
    sender = None
    if senders:
        first = senders[0]
        sender = first.get("original") or first.get("address") or first.get("name")
    body = file.get("plain_text") or file.get("preview_plain_text") or file.get("preview") or ""
    return file.get("subject"), sender, body


def complete_email(client, file: dict) -> dict:
    """The copy in the event can lack the body: `files.info` returns the whole file."""
    if file.get("plain_text") or not file.get("id"):
        return file
    try:
        return {**file, **client.files_info(file=file["id"])["file"]}
    except Exception as exc:  # noqa: BLE001 - keep the preview rather than lose the message
        log.warning("files.info failed for %s: %s; keeping the preview", file.get("id"), exc)
        return file


def is_own_or_bot(ctx: BotContext, event: dict) -> bool:
    if ctx.bot_user_id and event.get("user") == ctx.bot_user_id:
        return True
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message"


def store_event(ctx: BotContext, client, body: dict, event: dict):
    """Store a new message or email from a message event. Returns (message, created) or None when ignored."""
    channel, ts = event.get("channel"), event.get("ts")
    if not channel or not ts or not ctx.is_intake_channel(channel) or is_own_or_bot(ctx, event):
        return None
    if event.get("thread_ts") and event.get("thread_ts") != ts and event.get("subtype") != "thread_broadcast":
        return None  # a conversation in a thread (often under the bot's own reply), not a new request
    file = email_file(event)
    if file:
        subject, sender, raw = email_parts(complete_email(client, file))
        source = "email"
    else:
        subject, sender, raw = None, event.get("user"), event.get("text") or ""
        source = "slack_message"
    clean = ctx.clean(raw)
    if not clean and not subject:
        return None  # nothing a person or a model could label (a bare file share, say)
    return messages.add_message(
        ctx.db(),
        source=source,
        external_id=messages.slack_external_id(channel, ts),
        raw_body=raw,
        clean_body=clean,
        subject=subject,
        sender=sender,
        team=body.get("team_id"),
        channel=channel,
        ts=ts,
        thread_ts=event.get("thread_ts"),
        event_id=body.get("event_id"),
    )


def classify_and_reply(ctx: BotContext, client, message_id: int) -> None:
    """Work pool job: classify a stored message, record the prediction, answer in its thread (once)."""
    db = ctx.db()
    message = messages.get_message(db, message_id)
    if not replies.claim_reply(db, message_id, message.channel):
        return
    try:
        classifier = ctx.classifier()
        body = message.clean_body or message.subject or ""
        try:
            require_text(body)
            # Embedded once, here, and kept: the embedding classifier's refits never re-encode a message.
            vector = classifier.vector_for(db, message_id, body, message.subject)
            prediction = classifier.classify(body, message.subject, vector=vector)
        except EmptyText:  # answered once, as such: retrying cannot give it text
            log.info("message %d has no text to classify", message_id)
            text, shown = NOTHING_TO_CLASSIFY, None
        else:
            predictions.add_prediction(
                db,
                message_id=message_id,
                adapter_version=prediction.adapter_version,
                label=prediction.label,
                confidence=prediction.confidence,
                needs_review=prediction.needs_review,
                scores=prediction.scores,
                latency_ms=prediction.latency_ms,
                model=prediction.model,
            )
            names = [d.name for d in labels.list_label_defs(db)]
            text, shown = blocks.prediction_text(prediction), blocks.prediction_blocks(message_id, prediction, names)
        posted = client.chat_postMessage(
            channel=message.channel, thread_ts=message.ts, text=text, blocks=shown, metadata=reply_metadata(message_id)
        )
        replies.set_reply(db, message_id, message.channel, posted["ts"])
    except Exception:
        replies.release_reply(db, message_id)
        raise


def reply_metadata(message_id: int) -> dict:
    """Slack message metadata on every answer: a restarted bot finds what it already posted."""
    return metadata.tag(metadata.REPLY, message_id=message_id)


def answer(ctx: BotContext, client, message_id: int):
    """Queue the classification and answer of a stored message (once, however often it is asked for)."""
    return ctx.submit_once(("answer", message_id), classify_and_reply, ctx, client, message_id)


def recover_replies(ctx: BotContext, client) -> tuple[int, int]:
    """Settle answers a stopped bot left in doubt (claimed, post unconfirmed). Returns (found, released).

    An answer that reached Slack is found in the message's thread by its metadata and recorded;
    one that did not is released, so the backlog sweep answers the message. Run at start only:
    in a running bot a claim is an answer in progress.
    """
    db, found, released = ctx.db(), 0, 0
    for row in replies.in_doubt(db):
        message = messages.get_message(db, row["message_id"])
        try:
            thread = client.conversations_replies(channel=message.channel, ts=message.ts, include_all_metadata=True)
        except SlackApiError as exc:
            log.warning("cannot check the thread of message %d: %s", message.id, exc.response.get("error"))
            continue
        posted = metadata.find_tagged(thread.get("messages", []), metadata.REPLY, "message_id", message.id)
        if posted:
            replies.set_reply(db, message.id, message.channel, posted["ts"])
            found += 1
        else:
            replies.release_reply(db, message.id)
            released += 1
    return found, released


def answer_backlog(ctx: BotContext, client, *, older_than_s: float) -> int:
    """Queue an answer for every collected message that has none (failed posts, a bot stopped mid-work)."""
    waiting = replies.unanswered(ctx.db(), older_than_s=older_than_s)
    return sum(answer(ctx, client, message_id) is not None for message_id in waiting)


def refresh_reply(ctx: BotContext, client, message_id: int) -> None:
    """Redraw the bot's reply to a message after a human label (shows who labeled what)."""
    db = ctx.db()
    reply = replies.get_reply(db, message_id)
    prediction = predictions.latest_prediction(db, message_id)
    human = labels.current_label(db, message_id)
    if not reply or not prediction or not human:
        return
    shown = _Shown(prediction)
    names = [d.name for d in labels.list_label_defs(db)]
    client.chat_update(
        channel=reply["channel"],
        ts=reply["ts"],
        text=f"Labeled {mrkdwn.escape(human.label)}",
        blocks=blocks.prediction_blocks(message_id, shown, names, human={"label": human.label, "by": human.labeled_by}),
    )


class _Shown:
    """A stored prediction in the shape the reply blocks read."""

    def __init__(self, p):
        self.label, self.confidence, self.needs_review = p.label, p.confidence, p.needs_review
        self.adapter_version, self.zero_shot = p.adapter_version, p.adapter_version is None
        self.model = p.model  # bot.serving.answered_by words it (older rows have only the version)
        self.novel = False  # not stored; the needs-review flag it raised is
        self.alternatives = [[k, v] for k, v in list(p.scores.items())[1:3]]


def replay_spool(ctx: BotContext, client) -> int:
    """Store the events spooled while the database was busy. Returns how many were handled."""

    def store(record):
        try:
            handle_message(ctx, client, record["body"], record["event"])
        except RETRYABLE:
            ctx.forget_db()  # the next try opens a fresh connection (the file may be writable again)
            raise

    return ctx.intake_spool().replay(store)


def register(app, ctx: BotContext) -> None:
    def room_to_keep_it(body, next):
        # Before the acknowledgement: while the disk cannot take events, at most HOLD_LIMIT wait in memory.
        # Beyond that an event is refused unacknowledged, and Slack delivers it again later.
        if not ctx.intake_spool().admit():
            log.error(
                "event %s refused: %d events wait in memory for the disk",
                body.get("event_id"),
                ctx.intake_spool().held(),
            )
            return BoltResponse(status=503, body="the bot cannot store events right now; deliver it again later")
        next()

    @app.event("message", middleware=[room_to_keep_it])
    def on_message(body, event, client):
        ctx.intake_executor.submit(take_event, ctx, client, {k: body.get(k) for k in ("team_id", "event_id")}, event)


def take_event(ctx: BotContext, client, body: dict, event: dict) -> None:
    """Intake pool job: handle one acknowledged message event; kept for replay when the database cannot take it."""
    try:
        handle_message(ctx, client, body, event)
    except RETRYABLE as exc:
        # Acknowledged already: never lost. Kept on disk (or in memory while the disk cannot take it)
        # and stored when the database can take it.
        ctx.forget_db()
        where = ctx.intake_spool().keep({"body": body, "event": event})
        log.warning("database unavailable (%s): event %s %s for replay", exc, body.get("event_id"), where)
    finally:
        ctx.intake_spool().settled()  # the room reserved before the acknowledgement


def handle_message(ctx: BotContext, client, body: dict, event: dict) -> None:
    """A message event: a new message stored and answered, an edit or a deletion recorded."""
    subtype = event.get("subtype")
    if subtype == "message_changed":
        edited = event.get("message") or {}
        found = messages.find_message(ctx.db(), messages.slack_external_id(event.get("channel"), edited.get("ts")))
        if found and edited.get("text") is not None and not email_file(edited):
            clean = ctx.clean(edited["text"])
            messages.edit_message(ctx.db(), found.id, raw_body=edited["text"], clean_body=clean)
        return
    if subtype == "message_deleted":
        found = messages.find_message(
            ctx.db(), messages.slack_external_id(event.get("channel"), event.get("deleted_ts"))
        )
        if found:
            messages.mark_deleted(ctx.db(), found.id)
        return
    if subtype not in NEW_MESSAGE_SUBTYPES:
        return
    stored = store_event(ctx, client, body, event)
    if stored is None:
        return
    message, created = stored
    if created:
        log.info("stored %s %d from channel %s", message.source, message.id, message.channel)
        answer(ctx, client, message.id)
