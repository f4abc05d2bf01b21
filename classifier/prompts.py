"""Prompt construction: what the system and user turns say. `trainer.data.prompt_messages` is the one
builder training, serving and `supportbot export` call (through a `PromptSpec`).

Pure Python: no torch, so the bot and CLI can import it at no cost. The chat
template itself is applied by the tokenizer (`trainer.data`); this module
decides what the system and user turns say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INSTRUCTION = (
    "You triage customer support messages. Read the message and answer with exactly one "
    "label from the list below, and nothing else."
)
MAX_BODY_CHARS = 1500
ELLIPSIS = "\n[...]\n"

# Text that talks to the model rather than to support: a message can steer a zero-shot answer with it
# (bench/prompt_injection.py), so such answers always go to review. Phrases with short bounded gaps: linear.
_INSTRUCTION_LIKE = re.compile(
    r"\b(ignore|disregard|forget|override)\b.{0,40}\b(instruction|prompt|rule|label|system)s?\b"
    r"|\b(answer|respond|reply|classify|label|categori[sz]e|tag)\b.{0,30}\b(with|as|only)\b.{0,30}\blabel\b"
    r"|\b(classify|label|categori[sz]e|tag)\b.{0,20}\b(this|it|the message|the email)\b.{0,10}\bas\b"
    r"|\b(correct|right|true|real)\s+(label|category|answer)\b"
    r"|\brespond\s+only\b|\banswer\s+only\b|\byou\s+must\s+(answer|respond|reply|say|output|classify)\b"
    r"|\b(AI|assistant|language model|LLM|chatbot|classifier)\b.{0,30}\b(reading|must|should|answer)\b"
    r"|^\s*(system|assistant)\s*:|<\|im_(start|end)\|>|\[/?INST\]|^\s*#{2,}\s*(instruction|answer|response)",
    re.I | re.M)


def instruction_like(text: str, subject: str | None = None) -> bool:
    """Whether a message holds text addressed to a model (an attempt to choose its own label)."""
    return bool(_INSTRUCTION_LIKE.search(f"{subject or ''}\n{text}"))


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
