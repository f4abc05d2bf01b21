"""/datacheck and `supportbot datacheck`: data problems found before they cost a training run, fixed from Slack.

Curating training data is for admins (README, "Security and data"): the command and its buttons refuse
anyone else, and a finding about a message the admin cannot read (a channel they are not in) is shown
without its text or buttons. A click counts only for a button the bot showed that admin (its value is
sealed for them: Slack sends a click on an ephemeral message back without the message) and only while
they may read every message it changes.
"""

from __future__ import annotations

import json

from datacheck.runner import summary_line
from storage import StorageError, labels, messages

from ..blocks import CHANGE, EXCLUDE, KEEP, report_blocks
from ..context import BotContext
from ..mrkdwn import code, escape
from ..permissions import Refused, can_read, refuse, require_admin, require_reader, require_sealed, seal
from .intake import refresh_reply


def in_child_process(fn, *args):
    """`fn(*args)` in a fresh process (spawned, as this one has threads): its memory is returned when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def check_job(ctx: BotContext, respond, client=None, user: str = "") -> None:
    """/datacheck's work, on the check thread: the checks themselves run in a child process."""
    from datacheck.checks import check_data
    from storage.labels import training_examples

    db = ctx.db()
    report = in_child_process(check_data, training_examples(db))
    names = [d.name for d in labels.list_label_defs(db)]
    seen: dict[int, bool] = {}

    def readable(message_id: int) -> bool:
        if message_id not in seen:
            seen[message_id] = can_read(ctx, client, user, messages.get_message(db, message_id))
        return seen[message_id]

    def sealed(action_id: str, data: dict) -> dict:
        return seal(ctx, user, action_id, data)

    respond(response_type="ephemeral", text=summary_line(report), blocks=report_blocks(report, names, readable, sealed))


def clicked_value(action: dict):
    """The clicked button's or picked option's value, parsed (None when it is not JSON)."""
    raw = action.get("value") or (action.get("selected_option") or {}).get("value")
    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def register(app, ctx: BotContext) -> None:
    @app.command("/datacheck")
    def datacheck(ack, command, respond, client):
        try:
            require_admin(ctx, command["user_id"], "run the data check (it shows and fixes training data)")
        except Refused as exc:
            ack(response_type="ephemeral", text=str(exc))
            return
        count = len(labels.labeled_messages(ctx.db()))
        ack(response_type="ephemeral", text=f"Checking {count} labeled messages...")
        ctx.check_executor.submit(check_job, ctx, respond, client, command["user_id"])

    @app.action(KEEP)
    @app.action(CHANGE)
    @app.action(EXCLUDE)
    def fix(ack, body, action, client, respond):
        ack()
        user = body["user"]["id"]
        try:
            require_admin(ctx, user, "change or exclude training data")
        except Refused as exc:
            refuse(client, body, user, str(exc), respond)
            return
        data = clicked_value(action)
        try:
            # Only a button the bot showed this admin, about messages they may read: checked before any change.
            require_sealed(ctx, user, action["action_id"], data)
            ids = [int(i) for i in (data["m"] if isinstance(data["m"], list) else [data["m"]])]
            for message_id in ids:
                require_reader(ctx, client, user, messages.get_message(ctx.db(), message_id))
        except Refused as exc:
            refuse(client, body, user, str(exc), respond)
            return
        except StorageError as exc:  # a message deleted from the database since the check
            respond(response_type="ephemeral", replace_original=False, text=f"Nothing was changed: {escape(exc)}")
            return
        try:
            for message_id in ids:
                labels.add_label(
                    ctx.db(),
                    int(message_id),
                    data["l"],
                    by=user,
                    method="datacheck",
                    excluded=action["action_id"] == EXCLUDE,
                )
                ctx.submit(refresh_reply, ctx, client, int(message_id))
        except StorageError as exc:
            respond(response_type="ephemeral", replace_original=False, text=f"Could not save that: {escape(exc)}")
            return
        done = {
            KEEP: f"kept {code(data['l'])}",
            CHANGE: f"changed to {code(data['l'])}",
            EXCLUDE: f"excluded {len(ids)} message(s) from training",
        }[action["action_id"]]
        respond(response_type="ephemeral", replace_original=False, text=f"Data check: {done}.")
