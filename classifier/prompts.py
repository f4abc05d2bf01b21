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
    re.I | re.M,
)


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
    return text[:head].rstrip() + ELLIPSIS + text[len(text) - (keep - head) :].lstrip()


def user_prompt(text: str, subject: str | None = None, max_chars: int = MAX_BODY_CHARS) -> str:
    """The message as the model reads it: subject (kept whole) then the body, truncated in the middle."""
    body = truncate_middle(text.strip(), max_chars)
    return f"Subject: {subject.strip()}\n\n{body}" if subject and subject.strip() else body


def chat_messages(
    labels: list[LabelInfo], text: str, subject: str | None = None, max_chars: int = MAX_BODY_CHARS
) -> list[dict]:
    """System and user turns for one message (the prompt; the label is the completion)."""
    return [
        {"role": "system", "content": system_prompt(labels)},
        {"role": "user", "content": user_prompt(text, subject, max_chars)},
    ]


AUTO_LABEL_LIST_MAX = 30


def label_list_shown(setting: str, n_labels: int) -> bool:
    return setting == "always" or (setting == "auto" and n_labels <= AUTO_LABEL_LIST_MAX)


def readable(name: str) -> str:
    """A label as words: `card_arrival` -> `card arrival` (pretrained models know words, not identifiers)."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()) or name


@dataclass(frozen=True)
class PromptSpec:
    """Everything that decides what the model reads; saved with the adapter so serving matches training."""

    labels: tuple[LabelInfo, ...]
    show_label_list: bool
    max_body_chars: int
    verbalize: bool = False  # answer with readable label text instead of the raw name

    def to_dict(self) -> dict:
        return {
            "labels": [{"name": label.name, "description": label.description} for label in self.labels],
            "show_label_list": self.show_label_list,
            "max_body_chars": self.max_body_chars,
            "verbalize": self.verbalize,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PromptSpec":
        return cls(
            tuple(LabelInfo(label["name"], label.get("description", "")) for label in data["labels"]),
            bool(data["show_label_list"]),
            int(data["max_body_chars"]),
            bool(data.get("verbalize", False)),
        )

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def answer(self, name: str) -> str:
        """The text the model answers with for label `name`."""
        if not self.verbalize:
            return name
        forms = [readable(n) for n in self.names]
        # Readable forms must stay distinct (case-insensitively), or the raw names are used.
        return readable(name) if len({f.lower() for f in forms}) == len(forms) else name


def prompt_messages(spec: PromptSpec, text: str, subject: str | None = None) -> list[dict]:
    shown = (
        [LabelInfo(spec.answer(label.name), label.description) for label in spec.labels] if spec.show_label_list else []
    )
    return chat_messages(shown, text, subject, spec.max_body_chars)


def prompt_ids(tokenizer, spec: PromptSpec, text: str, subject: str | None = None) -> list[int]:
    """Token ids of the chat prompt up to and including the assistant header."""
    ids = tokenizer.apply_chat_template(prompt_messages(spec, text, subject), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def end_token_id(tokenizer) -> int:
    """The token that ends an assistant turn (ChatML: <|im_end|>; Gemma: <end_of_turn>)."""
    for token in ("<|im_end|>", "<end_of_turn>"):
        end = tokenizer.convert_tokens_to_ids(token)
        if isinstance(end, int) and end != tokenizer.unk_token_id:
            return end
    return tokenizer.eos_token_id


def label_ids(tokenizer, spec: PromptSpec, name: str) -> list[int]:
    """The completion for a label: its answer text's tokens, then the end-of-turn token."""
    return tokenizer.encode(spec.answer(name), add_special_tokens=False) + [end_token_id(tokenizer)]
