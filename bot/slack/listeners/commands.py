"""Slash commands. Every handler acknowledges first; every error is ephemeral and says what is valid."""

from __future__ import annotations

import logging
import re

from classifier.kinds import ADAPTER
from storage import (
    NotFound,
    RunConflict,
    StorageError,
    UnknownLabel,
    adapters,
    labels,
    messages,
    predictions,
    runs,
    served,
)
from textprep.text import EmptyText

from ...serving import answered_by, recorded_choice
from .. import blocks
from ..blocks import sections
from ..context import BotContext
from ..mrkdwn import code, escape, joined
from ..permissions import Refused, admins_line, require_admin, require_channel_labeler, require_labeler
from .intake import refresh_reply

log = logging.getLogger(__name__)

LINK = re.compile(r"https?://[^/\s>]+/archives/(?P<channel>[A-Z0-9]+)/p(?P<ts>\d{10})(?P<micro>\d{6})")
RETRAIN_USAGE = (
    "Usage: `/retrain [epochs=N] [batch_size=N] [grad_accum=N] [unlabelled_max=N] [gradient_checkpointing=true] "
    "[dry-run]`, `/retrain status`, `/retrain cancel`"
)
# What /retrain may set in the run's training config, with the whole numbers each takes.
RETRAIN_NUMBERS = {
    "epochs": range(1, 100),
    "batch_size": range(1, 65),
    "grad_accum": range(1, 65),
    "unlabelled_max": range(0, 10001),  # 0: no student (each unlabelled message costs the run one adapter pass)
}
RETRAIN_SWITCHES = ("gradient_checkpointing",)


def parse_link(text: str) -> tuple[str, str] | None:
    """(channel, ts) of a Slack message link (`https://team.slack.com/archives/C123/p1700000000000100`)."""
    found = LINK.search(text.strip("<>"))
    return (found["channel"], f"{found['ts']}.{found['micro']}") if found else None


def valid_labels(db) -> str:
    """The active labels for a usage or error line, cut to fit a message."""
    names = [code(d.name) for d in labels.list_label_defs(db)]
    return (
        joined(names, more="`/labels` lists them all") if names else "(none yet: an admin adds them with `/labels add`)"
    )


def label_command(ctx: BotContext, command: dict, client=None) -> tuple[str, int | None]:
    """Label the linked message, or the latest unlabeled one in this channel. Returns (answer, message id).

    Only members of the message's channel may label it (`permissions.require_labeler`)."""
    db = ctx.db()
    parts = (command.get("text") or "").split()
    if not parts:
        return f"Usage: `/label LABEL [message link]`. Valid labels: {valid_labels(db)}", None
    name, rest = parts[0], " ".join(parts[1:])
    try:
        label = labels.resolve_label(db, name)
    except UnknownLabel:
        return f"Unknown label {code(name[:64])}. Valid labels: {valid_labels(db)}", None
    if not rest:  # this channel's latest unlabeled message: members only, checked before anything is looked up
        try:
            require_channel_labeler(ctx, client, command["user_id"], command.get("channel_id"))
        except Refused as exc:
            return str(exc), None
    if rest:
        target = parse_link(rest)
        if target is None:
            return "That is not a Slack message link (use *Copy link* on the message).", None
        channel, ts = target
        if not ctx.is_intake_channel(channel):
            log.info("refused /label by %s: channel %s is not an intake channel", command.get("user_id"), channel)
            return f"<#{channel}> is not an intake channel, so its messages are not collected.", None
        try:
            require_channel_labeler(ctx, client, command["user_id"], channel)
        except Refused as exc:
            return str(exc), None
        message = messages.find_message(db, messages.slack_external_id(channel, ts))
        if message is None:
            return "That message was not collected (only messages posted after the bot joined are).", None
    else:
        message = messages.latest_unlabeled(db, command.get("channel_id"))
        if message is None:
            return "No unlabeled message in this channel. Add a message link: `/label LABEL LINK`.", None
    try:
        require_labeler(ctx, client, command["user_id"], message)
    except Refused as exc:
        return str(exc), None
    labels.add_label(db, message.id, label, by=command["user_id"], method="slash_command")
    preview = " ".join((message.subject or message.clean_body)[:80].split())
    return f"Labeled {code(label)}: {escape(preview)}", message.id


def retrain_option(word: str) -> tuple[str, object]:
    """(key, value) of one `/retrain` option like `batch_size=2`; ValueError says what is valid."""
    key, sep, value = word.partition("=")
    if sep and key in RETRAIN_NUMBERS:
        allowed = RETRAIN_NUMBERS[key]
        if value.isdigit() and int(value) in allowed:
            return key, int(value)
        raise ValueError(
            f"`{key}` takes a whole number from {allowed.start} to {allowed.stop - 1}, got {code(value[:20])}."
        )
    if sep and key in RETRAIN_SWITCHES:
        if value in ("true", "false"):
            return key, value == "true"
        raise ValueError(f"`{key}` takes `true` or `false`, got {code(value[:20])}.")
    raise ValueError(f"Unknown option {code(word[:100])}.")


def retrain_command(ctx: BotContext, command: dict) -> str:
    from datacheck.examples import DataError, check_examples
    from storage.labels import training_examples

    user = command["user_id"]
    words = (command.get("text") or "").split()
    db = ctx.db()
    if words[:1] == ["status"]:
        return run_status(db)
    if not ctx.is_admin(user):
        log.info("refused /retrain by %s: not an admin", user)
        return f"Only admins can retrain or cancel. Admins: {admins_line(ctx)}."
    if words[:1] == ["cancel"]:
        return cancel_run(ctx, db)
    params, dry_run = {}, False
    for word in words:
        if word == "dry-run":
            dry_run = True
            continue
        try:
            key, value = retrain_option(word)
        except ValueError as exc:
            return f"{exc} {RETRAIN_USAGE}"
        params[key] = value
    examples = training_examples(db)
    counts = labels.label_counts(db)
    summary = joined([f"{code(n)} {c}" for n, c in counts.items() if c]) or "nothing labeled yet"
    try:
        check_examples(examples, sorted({e["label"] for e in examples}) or ["(none)"])
    except DataError as exc:
        return f"Cannot train: {escape(exc)}. Labeled so far: {summary}."
    from datacheck.runner import run_check, summary_line

    quick_check = run_check(db, fast=True)
    if quick_check["summary"]["conflict"]:
        return (
            f"Cannot train: {summary_line(quick_check)}. Resolve the conflicting labels first "
            "(`/datacheck` shows them with buttons)."
        )
    warning = f"\nData check: {summary_line(quick_check)}." if quick_check["findings"] else ""
    if dry_run:
        return (
            f"Data check passed: {len(examples)} labeled messages ({summary}). Nothing was queued."
            + warning
            + "\nRun `/datacheck` for near duplicates and suspected mislabels."
        )
    try:
        run = runs.queue_run(db, requested_by=user, params=params)
    except RunConflict:
        return "A training run is already active.\n" + run_status(db)
    return f"Queued training run {run.id} on {len(examples)} labeled messages: {summary}." + warning


def run_status(db) -> str:
    active = runs.active_run(db) or next(iter(runs.list_runs(db, limit=1)), None)
    if active is None:
        return "No training runs yet."
    text = f"Run {active.id}: *{active.status}* (asked by <@{active.requested_by}>)"
    steps = runs.run_metrics(db, active.id)
    train = [m for m in steps if m.kind == "train"]
    evals = [m for m in steps if m.kind == "eval"]
    if train:
        text += f", step {train[-1].step}, train loss {train[-1].train_loss:.3f}"
    if evals:
        text += f", eval loss {evals[-1].eval_loss:.3f}"
    if active.error:
        text += f"\n{escape(active.error[:300])}"
    return text


def cancel_run(ctx: BotContext, db) -> str:
    from bot.runs.execute import request_cancel

    active = runs.active_run(db)
    if active is None:
        return "No training run is active."
    if active.status == "queued":
        runs.finish_run(db, active.id, "cancelled", error="cancelled before it started")
        return f"Run {active.id} was queued; it is cancelled."
    if active.run_dir:
        request_cancel(active.run_dir)
    return f"Run {active.id} will stop at its next training step."


def model_command(ctx: BotContext, command: dict) -> str:
    db = ctx.db()
    words = (command.get("text") or "").split()
    if words[:1] == ["rollback"]:
        if not ctx.is_admin(command["user_id"]):
            log.info("refused /model rollback by %s: not an admin", command["user_id"])
            return "Only admins can roll back the model."
        try:
            restored = adapters.rollback(db)
        except NotFound as exc:
            return f"Cannot roll back: {exc}."
        served.set_served(
            db,
            ADAPTER.name,
            adapter_version=restored.version,
            chosen_by=command["user_id"],
            reason=f"rolled back by <@{command['user_id']}>",
        )
        return f"Rolled back: adapter v{restored.version} is serving again."
    if words:
        return "Usage: `/model` or `/model rollback`."
    history = adapters.list_adapters(db)[:5]
    lines = [f"*Serving:* {serving_line(ctx, db)}"]
    unusable = ctx.unusable_adapters()
    for a in history:
        flag = " (serving)" if a.is_current else (" (promoted before)" if a.promoted_at else " (not promoted)")
        if a.version in unusable:
            flag = " (current, cannot serve)" if a.is_current else " (cannot serve)"
        lines.append(f"• v{a.version}: accuracy {a.metrics.get('accuracy', 0):.1%}, run {a.run_id}{flag}")
    return "\n".join(lines)


LABELS_USAGE = (
    "Usage: `/labels`, or (admins) `/labels add NAME DESCRIPTION`, `/labels describe NAME DESCRIPTION`, "
    "`/labels retire NAME`"
)


def labels_command(ctx: BotContext, command: dict) -> dict:
    """List the labels (anyone), or change the label set (admins: add, describe, retire)."""
    db = ctx.db()
    words = (command.get("text") or "").split(maxsplit=2)
    verb = words[0] if words else ""
    if verb in ("add", "describe", "retire"):
        try:
            require_admin(ctx, command["user_id"], "add, describe or retire labels")
        except Refused as exc:
            return {"text": str(exc)}
        if len(words) < 2:
            return {"text": LABELS_USAGE}
        description = words[2] if len(words) > 2 else ""
        try:
            if verb == "add":
                d = labels.add_label_def(db, words[1], description)
            elif verb == "describe":
                d = labels.describe_label(db, words[1], description)
            else:
                d = labels.retire_label(db, words[1])
                return {
                    "text": f"Label {code(d.name)} is retired: it is no longer offered or trained on; "
                    "its history stays (`/labels add` brings it back)."
                }
        except StorageError as exc:
            return {"text": f"Cannot {verb} that label: {escape(exc)}"}
        return {"text": f"Label {code(d.name)} is active" + (f": {escape(d.description)}" if d.description else ".")}
    if words:
        return {"text": LABELS_USAGE}
    counts = labels.label_counts(db)
    defs = labels.list_label_defs(db)
    if not defs:
        return {"text": "No labels yet. An admin adds one: `/labels add complaint Customer is unhappy`"}
    lines = [
        f"{code(d.name)} ({counts.get(d.name, 0)})" + (f": {escape(d.description)}" if d.description else "")
        for d in defs
    ]
    return {"text": f"{len(defs)} labels", "blocks": sections(lines)}


def serving_line(ctx: BotContext, db) -> str:
    """What serves, from the serving state (or, before this process classified anything, the served-model
    record), why, and the held-out scores of the adapter in it."""
    choice, state = served.current_served(db), ctx.serving_state()
    recorded = recorded_choice(db)
    name = state.name if state else recorded["name"] + " (not loaded yet: the first answer loads it)"
    line = (
        name + (f" ({escape(state.note)})" if state and state.note else "") + (f" - {choice.reason}" if choice else "")
    )
    version = state.adapter_version if state else (choice.adapter_version if choice else None)
    if version is None and not state and recorded["kind"] == ADAPTER.name:
        version = adapters.current_adapter(db).version
    adapter = adapters.get_adapter(db, version) if version is not None else None
    if adapter:
        m = adapter.metrics
        line += (
            f"\nadapter v{adapter.version}: accuracy {m.get('accuracy', 0):.1%}, macro-F1 "
            f"{m.get('macro_f1', 0):.3f} on {m.get('n', 0)} held-out messages"
            + (f" (embeddings on the same split: {m['baseline_accuracy']:.1%})" if "baseline_accuracy" in m else "")
        )
    return line


def stats_payload(ctx: BotContext) -> list[dict]:
    db = ctx.db()
    return blocks.stats_blocks(
        labels.stats(db), predictions.live_accuracy(db), next(iter(runs.list_runs(db, 1)), None), serving_line(ctx, db)
    )


def classify_job(ctx: BotContext, text: str, respond) -> None:
    try:
        p = ctx.classifier().classify(text)
    except EmptyText as exc:
        respond(text=str(exc), response_type="ephemeral")
        return
    source = answered_by(p)
    review = " - *needs review*" if p.needs_review else ""
    alternatives = ", ".join(f"{code(n)} {v:.0%}" for n, v in p.alternatives)
    respond(
        text=f"{code(p.label)} ({p.confidence:.0%}, {source}){review}. Next: {alternatives}", response_type="ephemeral"
    )


CHECKING = "Checking..."  # the acknowledgement of a command answered after it (`deferred` below)


def register(app, ctx: BotContext) -> None:
    def deferred(handler):
        """A command that asks Slack (channel membership) or reads at length: acknowledged at once, answered
        from the command pool through the response URL."""

        def listener(ack, command, respond, client):
            ack(response_type="ephemeral", text=CHECKING)
            ctx.command_executor.submit(answer_later, handler, command, respond, client)

        def answer_later(handler, command, respond, client):
            try:
                respond(response_type="ephemeral", replace_original=True, **handler(command, client))
            except Exception as exc:  # noqa: BLE001 - the person is told; the traceback goes to the log
                log.exception("%s failed", command.get("command"))
                ctx.db_failed(exc)  # a database error: this thread opens a fresh connection next time
                respond(
                    response_type="ephemeral",
                    replace_original=True,
                    text="Sorry, that failed on our side; it is logged. Try again in a minute.",
                )

        return listener

    @deferred
    def label_answer(command, client) -> dict:
        text, message_id = label_command(ctx, command, client)
        if message_id:
            ctx.submit(refresh_reply, ctx, client, message_id)  # show the human label under the message
        return {"text": text}

    app.command("/label")(label_answer)
    app.command("/retrain")(deferred(lambda command, client: {"text": retrain_command(ctx, command)}))
    # These read tables that grow with the team's data (predictions, the label history): answered after
    # the acknowledgement too, so a large database never makes Slack wait.
    app.command("/model")(deferred(lambda command, client: {"text": model_command(ctx, command)}))
    app.command("/labels")(deferred(lambda command, client: labels_command(ctx, command)))
    app.command("/stats")(deferred(lambda command, client: {"blocks": stats_payload(ctx), "text": "supportbot stats"}))

    @app.command("/classify")
    def classify(ack, command, respond):
        text = (command.get("text") or "").strip()
        if not text:
            ack(response_type="ephemeral", text="Usage: `/classify TEXT`")
            return
        ack(response_type="ephemeral", text="Classifying...")
        ctx.submit(classify_job, ctx, text, respond)
