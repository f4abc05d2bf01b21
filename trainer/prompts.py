"""Prompt construction: what the system and user turns say. `trainer.data.prompt_messages` is the one
builder training, serving and `supportbot export` call (through a `PromptSpec`).

Pure Python: no torch, so the bot and CLI can import it at no cost. The chat
template itself is applied by the tokenizer (`trainer.data`); this module
decides what the system and user turns say.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTRUCTION = (
    "You triage customer support messages. Read the message and answer with exactly one "
    "label from the list below, and nothing else."
)
MAX_BODY_CHARS = 1500
ELLIPSIS = "\n[...]\n"


@dataclass(frozen=True)
class LabelInfo:
    name: str
    description: str = ""


def system_prompt(labels: list[LabelInfo], instruction: str = INSTRUCTION) -> str:
    """The instruction and the label list (with descriptions when present).

    Identical for every message of a label set, so its KV cache can be computed
    once per adapter and label set.
    """
    lines = [instruction, "", "Labels:"]
    for label in labels:
        lines.append(f"- {label.name}: {label.description}" if label.description else f"- {label.name}")
    return "\n".join(lines)


def truncate_middle(text: str, max_chars: int = MAX_BODY_CHARS) -> str:
    """Keep the start and the end of a long text (greetings and sign-offs carry little; both ends carry intent)."""
    if len(text) <= max_chars:
        return text
    keep = max_chars - len(ELLIPSIS)
    head = keep * 2 // 3
    return text[:head].rstrip() + ELLIPSIS + text[len(text) - (keep - head):].lstrip()


def user_prompt(text: str, subject: str | None = None, max_chars: int = MAX_BODY_CHARS) -> str:
    """The message as the model reads it: subject (kept whole) then the body, truncated in the middle."""
    body = truncate_middle(text.strip(), max_chars)
    return f"Subject: {subject.strip()}\n\n{body}" if subject and subject.strip() else body


def chat_messages(labels: list[LabelInfo], text: str, subject: str | None = None,
                  max_chars: int = MAX_BODY_CHARS) -> list[dict]:
    """System and user turns for one message (the prompt; the label is the completion)."""
    return [
        {"role": "system", "content": system_prompt(labels)},
        {"role": "user", "content": user_prompt(text, subject, max_chars)},
    ]
