"""Scheduled work, in the bot process only (one scheduler in the system). It queues and relays; it never trains.

- relay: delivers the outbox every few seconds (and settles in-doubt rows at start);
- answers: settles thread replies left in doubt at start, then every minute queues an answer for
  any collected message still without one (a failed post, a bot stopped mid-work);
- retrain (off unless SUPPORTBOT_RETRAIN_CRON is set: it costs GPU time): queues a run when at
  least SUPPORTBOT_RETRAIN_MIN_NEW_LABELS human labels arrived since the last run;
- digest (SUPPORTBOT_DIGEST_CRON, needs a report channel): the unlabeled messages the model is
  least sure of, with label pickers (the labels that teach the model most);
- spool: stores events the database could not take when they came (at start, then every 5 s);
- retention: daily, deletes the training data copied into finished runs' folders after
  SUPPORTBOT_KEEP_RUN_INPUTS_DAYS.
"""

from __future__ import annotations

import datetime as dt
import logging

from storage import RunConflict, labels, outbox, predictions, runs

from ..runs.retention import remove_old_run_inputs
from . import blocks, mrkdwn
from .app import web_client
from .context import BotContext
from .listeners.intake import answer_backlog, recover_replies, replay_spool
from .permissions import is_private
from .relay import Relay

log = logging.getLogger(__name__)

BACKLOG_AFTER_S = 60  # a message still unanswered this long after arriving is queued again


def new_human_labels(db) -> int:
    """Messages labeled by people since the last run (one message clicked 50 times counts once)."""
    last = next(iter(runs.list_runs(db, limit=1)), None)
    return labels.new_human_labels(db, last.queued_at if last else "")


def maybe_retrain(ctx: BotContext) -> str:
    db = ctx.db()
    fresh = new_human_labels(db)
    if fresh < ctx.settings.retrain_min_new_labels:
        return f"skipped: {fresh} new labels (needs {ctx.settings.retrain_min_new_labels})"
    try:
        run = runs.queue_run(db, requested_by="scheduler", params={})
    except RunConflict as exc:
        return f"skipped: {exc}"
    return f"queued run {run.id} ({fresh} new labels)"


def least_sure(db, limit: int = 5, hours: int = 24) -> list[dict]:
    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)).isoformat()
    return predictions.least_sure(db, since=since, limit=limit)


def digest_preview(ctx: BotContext, client, row: dict) -> str:
    """A digest line's quote: the text of a message from a public channel (or the report channel itself);
    for a private channel, only where it is, so the report channel never shows what its members cannot read."""
    channel = row["channel"]
    if channel and (channel == ctx.settings.report_channel or not is_private(ctx, client, channel)):
        text = (row["subject"] + ": " if row["subject"] else "") + row["clean_body"]
        return mrkdwn.quote(text, 200)
    where = f"<#{channel}>" if channel else "an import"
    return f">_(a message in {where}: its text is shown only there)_"


def post_digest(ctx: BotContext, client=None) -> str:
    db = ctx.db()
    if not ctx.settings.report_channel:
        return "skipped: no report channel"
    rows = least_sure(db)
    if not rows:
        return "skipped: nothing unsure and unlabeled today"
    client = client or web_client(ctx.settings)
    names = [d.name for d in labels.list_label_defs(db)]
    body = [
        blocks.section(
            f"*Today's {len(rows)} least certain messages* "
            "- a label on each teaches the model the most (members of a message's channel can label it)."
        )
    ]
    for row in rows:
        text = f"{digest_preview(ctx, client, row)}\nguess {mrkdwn.code(row['label'])} ({row['confidence']:.0%})"
        body.append(blocks.section(text, accessory=blocks.label_select(names, row["id"])))
    key = f"digest:{dt.date.today().isoformat()}"
    # message_ids: a click on the digest's pickers is accepted only for the messages it lists
    outbox.put(
        db,
        key,
        ctx.settings.report_channel,
        {"text": "Messages that need a label", "blocks": body, "message_ids": [row["id"] for row in rows]},
    )
    return f"queued digest of {len(rows)} messages"


def start_scheduler(ctx: BotContext, client):
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per relay tick
    relay = Relay(ctx.db, client, files_dir=ctx.settings.runs_dir)
    relay.recover()
    answers = web_client(ctx.settings)  # thread replies retry 429/5xx in the call, like the app's
    found, released = recover_replies(ctx, answers)
    replayed = replay_spool(ctx, answers)
    if replayed:
        log.info("stored %d events spooled while the database was busy", replayed)
    queued = answer_backlog(ctx, answers, older_than_s=0)
    if found or released or queued:
        log.info("answers at start: %d found posted, %d released, %d queued", found, released, queued)
    scheduler = BackgroundScheduler(daemon=True)
    job = ctx.reopens_db  # a job that failed on the database opens a fresh connection the next time
    scheduler.add_job(job(relay.deliver_due), "interval", seconds=2, id="relay", max_instances=1, coalesce=True)
    scheduler.add_job(
        job(lambda: replay_spool(ctx, answers)), "interval", seconds=5, id="spool", max_instances=1, coalesce=True
    )
    scheduler.add_job(
        job(lambda: log.info("retention: %s", remove_old_run_inputs(ctx.settings, ctx.db()))),
        "interval",
        hours=24,
        id="retention",
        max_instances=1,
        coalesce=True,
        next_run_time=dt.datetime.now(dt.timezone.utc),
    )
    scheduler.add_job(
        job(lambda: answer_backlog(ctx, answers, older_than_s=BACKLOG_AFTER_S)),
        "interval",
        seconds=BACKLOG_AFTER_S,
        id="answers",
        max_instances=1,
        coalesce=True,
    )
    if ctx.settings.retrain_cron:
        scheduler.add_job(
            job(lambda: log.info("scheduled retrain: %s", maybe_retrain(ctx))),
            CronTrigger.from_crontab(ctx.settings.retrain_cron),
            id="retrain",
        )
    if ctx.settings.digest_cron and ctx.settings.report_channel:
        scheduler.add_job(
            job(lambda: log.info("digest: %s", post_digest(ctx, answers))),
            CronTrigger.from_crontab(ctx.settings.digest_cron),
            id="digest",
        )
    scheduler.start()
    return scheduler
