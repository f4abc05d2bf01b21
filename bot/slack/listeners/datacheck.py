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

from ..context import BotContext
from ..mrkdwn import code, escape, fit, plain
from ..permissions import Refused, can_read, refuse, require_admin, require_reader, require_sealed, seal
from .intake import refresh_reply

KEEP, CHANGE, EXCLUDE = "datacheck_keep", "datacheck_change", "datacheck_exclude"
SHOWN = 5


def shown_message(finding: dict, readable) -> str:
    """A finding's text (escaped), or a description without message text when the viewer cannot read one."""
    if all(readable(i) for i in finding["ids"]):
        return escape(finding["message"])
    labels_in = ", ".join(code(n) for n in finding.get("labels") or [])
    return (
        f"messages {', '.join(map(str, finding['ids']))}"
        + (f" ({labels_in})" if labels_in else "")
        + ": text hidden, some are in a channel you are not in (an admin who is in it can fix this)"
    )


def unsealed(action_id: str, data: dict) -> dict:
    return data


def finding_blocks(finding: dict, names: list[str], readable=lambda message_id: True, sealed=unsealed) -> list[dict]:
    """One finding with its fixes: keep the label, change it, or leave the message(s) out of training.

    `sealed(action_id, data)` is what each control's value carries (the bot seals it for the admin it shows).
    """

    def value(action_id: str, data: dict) -> str:
        return json.dumps(sealed(action_id, data), separators=(",", ":"))

    text = {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": fit(f"*{finding['kind'].replace('_', ' ')}*: {shown_message(finding, readable)}"),
        },
    }
    if not all(readable(i) for i in finding["ids"]):  # fixing a message's training data starts with reading it
        return [text]
    first = finding["ids"][0]
    given = finding["detail"].get("given") or finding["labels"][0]
    options = [{"text": plain(n, 75), "value": value(CHANGE, {"m": first, "l": n})} for n in names[:100]]
    actions = {
        "type": "actions",
        "block_id": f"datacheck_{first}",
        "elements": [
            {
                "type": "button",
                "action_id": KEEP,
                "text": plain(f"Keep {given}", 75),
                "value": value(KEEP, {"m": first, "l": given}),
            },
            {
                "type": "static_select",
                "action_id": CHANGE,
                "placeholder": {"type": "plain_text", "text": "Change to"},
                "options": options,
            },
            {
                "type": "button",
                "action_id": EXCLUDE,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Exclude"},
                "value": value(EXCLUDE, {"m": finding["ids"], "l": given}),
            },
        ],
    }
    if len(actions["elements"][-1]["value"]) > 2000:  # Slack's limit for a button value
        actions["elements"].pop()
    return [text, actions]


def report_blocks(report: dict, names: list[str], readable=lambda message_id: True, sealed=unsealed) -> list[dict]:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Data check* - " + summary_line(report)}}]
    for kind in ("suspected_mislabel", "conflict", "near_conflict", "leakage"):
        for finding in [f for f in report["findings"] if f["kind"] == kind][:SHOWN]:
            blocks += finding_blocks(finding, names, readable, sealed)
    rest = [f for f in report["findings"] if f["kind"] in ("duplicate", "near_duplicate", "too_few", "imbalance")]
    if rest:
        lines = "\n".join(f"• {shown_message(f, readable)}" for f in rest[:10])
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": fit(lines, 2900)}]})
    return blocks[:50]


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
