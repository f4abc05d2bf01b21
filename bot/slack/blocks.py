"""Block Kit for the bot's messages and views. Plain data in, Slack JSON out."""

from __future__ import annotations

import json

from datacheck.runner import summary_line

from ..serving import answered_by
from .mrkdwn import MAX_BLOCKS, SECTION_CHARS, code, escape, fit, plain, quote

PICK_ACTION = "label_pick"
CONFIRM_ACTION = "label_confirm"
MODAL_CALLBACK = "label_modal"
SHORTCUT_CALLBACK = "label_message"
MAX_OPTIONS = 100  # Slack's limit for a static select
KEEP, CHANGE, EXCLUDE = "datacheck_keep", "datacheck_change", "datacheck_exclude"  # the data check's fixes
SHOWN = 5  # findings of each kind shown with their fixes


def _mrkdwn(text: str) -> dict:
    return {"type": "mrkdwn", "text": text}


def section(text: str, **extra) -> dict:
    """A section of mrkdwn `text` (already escaped: see bot.slack.mrkdwn), with e.g. an `accessory`."""
    return {"type": "section", "text": _mrkdwn(text), **extra}


def context(text: str) -> dict:
    """The small grey line under a message's sections."""
    return {"type": "context", "elements": [_mrkdwn(text)]}


def option_value(message_id: int, label: str) -> str:
    """An option's value: the message and the label (label names are at most 64 ASCII characters, so this
    stays within Slack's 150)."""
    return json.dumps({"m": message_id, "l": label}, separators=(",", ":"))


def label_select(labels: list[str], message_id: int, initial: str | None = None) -> dict:
    # storage keeps at most 100 labels active (a static select's limit), so every label is offered
    options = [{"text": plain(name, 75), "value": option_value(message_id, name)} for name in labels[:MAX_OPTIONS]]
    element = {
        "type": "static_select",
        "action_id": PICK_ACTION,
        "placeholder": {"type": "plain_text", "text": "Change label"},
        "options": options,
    }
    if initial in labels[:MAX_OPTIONS]:
        element["initial_option"] = options[labels.index(initial)]
    return element


def prediction_blocks(message_id: int, prediction, labels: list[str], human: dict | None = None) -> list[dict]:
    """The thread reply: prediction, confidence, adapter, and the controls to confirm or change it."""
    source = answered_by(prediction)
    if prediction.novel:
        source += " · unlike any labelled message"
    head = f"*Label:* {code(prediction.label)}  ({prediction.confidence:.0%})"
    if prediction.needs_review:
        head = f":warning: *Needs review* - best guess {code(prediction.label)} ({prediction.confidence:.0%})"
    alternatives = ", ".join(f"{code(name)} {p:.0%}" for name, p in prediction.alternatives)
    blocks = [
        {"type": "section", "block_id": "prediction", "text": _mrkdwn(head)},
        {"type": "context", "elements": [_mrkdwn(f"{source}" + (f" · next: {alternatives}" if alternatives else ""))]},
    ]
    if human:
        blocks.append(
            {
                "type": "section",
                "block_id": "human",
                "text": _mrkdwn(f":white_check_mark: Labeled {code(human['label'])} by <@{escape(human['by'])}>"),
            }
        )
    confirm = {
        "type": "button",
        "action_id": CONFIRM_ACTION,
        "text": {"type": "plain_text", "text": "Correct"},
        "style": "primary",
        "value": option_value(message_id, prediction.label),
    }
    blocks.append(
        {
            "type": "actions",
            "block_id": "label_actions",
            "elements": [confirm, label_select(labels, message_id, human["label"] if human else None)],
        }
    )
    return blocks


def prediction_text(prediction) -> str:
    """Fallback text (notifications, screen readers)."""
    review = " (needs review)" if prediction.needs_review else ""
    return f"Label: {escape(prediction.label)} ({prediction.confidence:.0%}){review}"


def label_modal(message_id: int, labels: list[str], preview: str) -> dict:
    return {
        "type": "modal",
        "callback_id": MODAL_CALLBACK,
        "private_metadata": json.dumps({"m": message_id}),
        "title": {"type": "plain_text", "text": "Label this message"},
        "submit": {"type": "plain_text", "text": "Save"},
        "blocks": [
            {"type": "section", "text": _mrkdwn(quote(preview, 280))},
            {
                "type": "input",
                "block_id": "label",
                "label": {"type": "plain_text", "text": "Label"},
                "element": {**label_select(labels, message_id), "action_id": "choice"},
            },
        ],
    }


def stats_blocks(stats: dict, live: dict, last_run=None, serving: str = "") -> list[dict]:
    """`/stats` and App Home. `serving`: the line saying what serves (from the served-model record);
    `live`: storage.predictions.live_accuracy, per model that answered."""
    lines = [f"*Messages:* {stats['messages']}   *Labeled:* {stats['labeled']}", f"*Serving:* {serving}"]
    counts = [f"{code(name)} {n}" for name, n in stats["labels"].items()] or ["(no labels yet)"]
    blocks = [{"type": "section", "text": _mrkdwn("\n".join(lines))}]
    blocks += sections(["*Per label*"] + counts, max_blocks=40, more="`/labels` lists them all")
    if live:
        rows = "\n".join(
            f"{escape(model)}: {x['accuracy']:.0%} of {x['n']} ({x['confirmed']} confirmed, {x['corrected']} corrected)"
            for model, x in live.items()
        )
        blocks.append(
            {
                "type": "section",
                "text": _mrkdwn(
                    "*Live accuracy* (each message's latest prediction, by the model that made it, against the label a "
                    "person gave afterwards)\n" + rows
                ),
            }
        )
    if last_run:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _mrkdwn(
                        f"Last training run {last_run.id}: {last_run.status}"
                        + (f" - {escape(last_run.error[:200])}" if last_run.error else "")
                    )
                ],
            }
        )
    return blocks


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

    text = section(fit(f"*{finding['kind'].replace('_', ' ')}*: {shown_message(finding, readable)}"))
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
    blocks = [section("*Data check* - " + summary_line(report))]
    for kind in ("suspected_mislabel", "conflict", "near_conflict", "leakage"):
        for finding in [f for f in report["findings"] if f["kind"] == kind][:SHOWN]:
            blocks += finding_blocks(finding, names, readable, sealed)
    rest = [f for f in report["findings"] if f["kind"] in ("duplicate", "near_duplicate", "too_few", "imbalance")]
    if rest:
        lines = "\n".join(f"• {shown_message(f, readable)}" for f in rest[:10])
        blocks.append(context(fit(lines, 2900)))
    return blocks[:50]


def sections(lines: list[str], *, max_blocks: int = MAX_BLOCKS - 2, more: str = "") -> list[dict]:
    """Escaped mrkdwn lines packed into section blocks of at most 3,000 characters, at most `max_blocks`.

    Lines that do not fit are counted in a last context block (`more` says where to see them).
    """
    blocks, current = [], ""
    for i, line in enumerate(lines):
        line = fit(line)
        if current and len(current) + 1 + len(line) > SECTION_CHARS:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": current}})
            current = ""
            if len(blocks) == max_blocks:
                rest = len(lines) - i
                blocks.append(
                    {
                        "type": "context",
                        "elements": [{"type": "mrkdwn", "text": f"… and {rest} more" + (f" ({more})" if more else "")}],
                    }
                )
                return blocks
        current = f"{current}\n{line}" if current else line
    if current:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": current}})
    return blocks
