"""/datacheck and `supportbot datacheck`: data problems found before they cost a training run, fixed from Slack."""

from __future__ import annotations

import json

from storage import StorageError, labels

from .context import BotContext
from .intake import refresh_reply

KEEP, CHANGE, EXCLUDE = "datacheck_keep", "datacheck_change", "datacheck_exclude"
SHOWN = 5


def run_check(db, fast: bool = False) -> dict:
    """All checks; `fast` keeps to those that need no model (exact duplicates, conflicts, thin labels)."""
    from trainer.datacheck import KINDS, check_data, exact_groups, label_counts

    from .training import training_examples

    rows = training_examples(db)
    if not fast:
        return check_data(rows)
    findings = exact_groups(rows) + label_counts(rows, 2, 10.0)
    return {"examples": len(rows), "method": None, "findings": [f.to_dict() for f in findings],
            "summary": {k: sum(f.kind == k for f in findings) for k in KINDS}}


def summary_line(report: dict) -> str:
    parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in report["summary"].items() if n]
    return f"{report['examples']} labeled messages checked: " + (", ".join(parts) if parts else "no problems found")


def _value(message_id: int, label: str) -> str:
    return json.dumps({"m": message_id, "l": label})


def finding_blocks(finding: dict, names: list[str]) -> list[dict]:
    """One finding with its fixes: keep the label, change it, or leave the message(s) out of training."""
    text = {"type": "section", "text": {"type": "mrkdwn", "text": f"*{finding['kind'].replace('_', ' ')}*: "
                                                                  f"{finding['message']}"}}
    first = finding["ids"][0]
    given = finding["detail"].get("given") or finding["labels"][0]
    options = [{"text": {"type": "plain_text", "text": n[:75]}, "value": _value(first, n)} for n in names[:100]]
    actions = {"type": "actions", "block_id": f"datacheck_{first}", "elements": [
        {"type": "button", "action_id": KEEP, "text": {"type": "plain_text", "text": f"Keep {given}"[:75]},
         "value": _value(first, given)},
        {"type": "static_select", "action_id": CHANGE, "placeholder": {"type": "plain_text", "text": "Change to"},
         "options": options},
        {"type": "button", "action_id": EXCLUDE, "style": "danger", "text": {"type": "plain_text", "text": "Exclude"},
         "value": json.dumps({"m": finding["ids"], "l": given})}]}
    return [text, actions]


def report_blocks(report: dict, names: list[str]) -> list[dict]:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Data check* - " + summary_line(report)}}]
    for kind in ("suspected_mislabel", "conflict", "near_conflict", "leakage"):
        for finding in [f for f in report["findings"] if f["kind"] == kind][:SHOWN]:
            blocks += finding_blocks(finding, names)
    rest = [f for f in report["findings"] if f["kind"] in ("duplicate", "near_duplicate", "too_few", "imbalance")]
    if rest:
        lines = "\n".join(f"• {f['message']}" for f in rest[:10])
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": lines[:2900]}]})
    return blocks[:50]


def in_child_process(fn, *args):
    """`fn(*args)` in a fresh process (spawned, as this one has threads): its memory is returned when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def check_job(ctx: BotContext, respond) -> None:
    """/datacheck's work, on the check thread: the checks themselves run in a child process."""
    from trainer.datacheck import check_data

    from .training import training_examples

    db = ctx.db()
    report = in_child_process(check_data, training_examples(db))
    names = [d.name for d in labels.list_label_defs(db)]
    respond(response_type="ephemeral", text=summary_line(report), blocks=report_blocks(report, names))


def register(app, ctx: BotContext) -> None:
    @app.command("/datacheck")
    def datacheck(ack, respond):
        count = len(labels.labeled_messages(ctx.db()))
        ack(response_type="ephemeral", text=f"Checking {count} labeled messages...")
        ctx.check_executor.submit(check_job, ctx, respond)

    @app.action(KEEP)
    @app.action(CHANGE)
    @app.action(EXCLUDE)
    def fix(ack, body, action, client, respond):
        ack()
        raw = action.get("value") or (action.get("selected_option") or {}).get("value")
        data = json.loads(raw)
        ids = data["m"] if isinstance(data["m"], list) else [data["m"]]
        user = body["user"]["id"]
        try:
            for message_id in ids:
                labels.add_label(ctx.db(), int(message_id), data["l"], by=user, method="datacheck",
                                 excluded=action["action_id"] == EXCLUDE)
                ctx.submit(refresh_reply, ctx, client, int(message_id))
        except StorageError as exc:
            respond(response_type="ephemeral", replace_original=False, text=f"Could not save that: {exc}")
            return
        done = {KEEP: f"kept `{data['l']}`", CHANGE: f"changed to `{data['l']}`",
                EXCLUDE: f"excluded {len(ids)} message(s) from training"}[action["action_id"]]
        respond(response_type="ephemeral", replace_original=False, text=f"Data check: {done}.")
