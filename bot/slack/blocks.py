"""Block Kit for the bot's messages and views. Plain data in, Slack JSON out."""

from __future__ import annotations

import json

from ..serving import answered_by
from .mrkdwn import code, escape, plain, quote, sections

PICK_ACTION = "label_pick"
CONFIRM_ACTION = "label_confirm"
MODAL_CALLBACK = "label_modal"
SHORTCUT_CALLBACK = "label_message"
MAX_OPTIONS = 100  # Slack's limit for a static select


def _mrkdwn(text: str) -> dict:
    return {"type": "mrkdwn", "text": text}


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
