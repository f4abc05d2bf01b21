"""Cleaning support emails before anyone (or any model) reads them.

Removes what is not the customer's message: quoted earlier mails (Gmail's
"On ... wrote:", Outlook's "-----Original Message-----" and "From:/Sent:"
headers, `>` blocks), signatures ("-- ", "Sent from my iPhone", "Best
regards," + a name), and forwarded-message headers (kept as fields).
Optionally redacts email addresses, phone numbers and card-like numbers.
Pure text in, text out: the raw text is always stored beside the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .text import to_text

_REPLY_MARKERS = [
    re.compile(r"^\s*On .{3,200}\b(wrote|schrieb|a écrit|escribió|ha scritto)\s*:\s*$", re.I | re.M),
    re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.I | re.M),
    re.compile(r"^\s*_{5,}\s*$", re.M),  # Outlook's rule above the quoted header
    re.compile(r"^\s*From:\s.+\n\s*(Sent|Date):\s.+\n", re.I | re.M),
    re.compile(r"^\s*Le .{3,200} a écrit\s*:\s*$", re.I | re.M),
]
_FORWARD_MARKER = re.compile(r"^\s*-{2,}\s*Forwarded message\s*-{2,}\s*$|^\s*Begin forwarded message:\s*$", re.I | re.M)
_SIGNATURE_MARKERS = [
    re.compile(r"^-- ?$", re.M),  # the standard signature separator
    re.compile(r"^\s*(Sent from my (iPhone|iPad|Android|Galaxy|mobile)|Get Outlook for (iOS|Android)).*$", re.I | re.M),
]
_CLOSING = re.compile(
    r"^[ \t]*(best( regards)?|kind regards|regards|thanks( a lot)?|thank you|cheers|sincerely|"
    r"many thanks|br|mit freundlichen grüßen|cordialement)[,!.]?[ \t]*$",
    re.I | re.M,
)
_CLOSING_TAIL_LINES, _CLOSING_TAIL_CHARS = 4, 120  # the most a name block under a closing line holds
_HEADER_FIELD = re.compile(r"^\s*(From|Date|Sent|Subject|To|Cc):\s*(.*)$", re.I)

# Bounded repeats (an address's local part is at most 64 characters, a domain label 63): unbounded ones
# let a long run like "a.a.a.a..." be rescanned from every position, quadratic in its length.
EMAIL = re.compile(r"\b[\w.+-]{1,64}@[\w-]{1,63}(\.[\w-]{1,63}){1,8}\b")
CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
PHONE = re.compile(r"(?<![\w/])\+?\d[\d ()./-]{7,30}\d\b")


@dataclass
class CleanEmail:
    body: str
    forwarded: dict = field(default_factory=dict)  # headers of a forwarded message (from, subject, date...)
    removed: list[str] = field(default_factory=list)  # what was cut: "quoted reply", "signature", ...


def _cut_at_first(text: str, patterns) -> tuple[str, bool]:
    positions = [m.start() for p in patterns for m in [p.search(text)] if m]
    if not positions:
        return text, False
    return text[: min(positions)], True


def _strip_quote_blocks(text: str) -> tuple[str, bool]:
    lines = text.split("\n")
    kept = [line for line in lines if not line.lstrip().startswith(">")]
    return "\n".join(kept), len(kept) != len(lines)


def _parse_forward(text: str) -> tuple[str, dict]:
    """A forwarded mail: keep its body and its header fields; what the forwarder wrote above stays too."""
    match = _FORWARD_MARKER.search(text)
    if not match:
        return text, {}
    above, below = text[: match.start()].strip(), text[match.end() :].lstrip("\n")
    fields, body_lines, in_header = {}, [], True
    for line in below.split("\n"):
        if in_header:
            header = _HEADER_FIELD.match(line)
            if header:
                fields[header.group(1).lower()] = header.group(2).strip()
                continue
            in_header = False  # the first line that is not a header field ends the header block
            if not line.strip():
                continue
        body_lines.append(line)
    forwarded = "\n".join(body_lines).strip()
    return (f"{above}\n\n{forwarded}".strip() if above else forwarded), fields


def _strip_closing(text: str) -> tuple[str, bool]:
    """A closing line ("Best regards,") followed only by a short name block ends the message.

    The earliest such closing wins. What follows a closing only grows the earlier it is, so the
    closings are tried from the last one back and the first that fails ends the search: each text
    is looked at a bounded number of times (trying them front to back was quadratic in a message of
    thousands of "thanks" lines)."""
    body = text.rstrip()
    cut = None
    for match in reversed(list(_CLOSING.finditer(body))):
        tail = body[match.end() :].lstrip()
        if tail.count("\n") >= _CLOSING_TAIL_LINES or len(tail) > _CLOSING_TAIL_CHARS:
            break
        cut = match.start()
    return (text, False) if cut is None else (text[:cut], True)


def redact(text: str) -> str:
    """Replace email addresses, card-like numbers and phone numbers with placeholders."""
    text = EMAIL.sub("[email]", text)
    text = CARD.sub(lambda m: "[card]" if len(re.sub(r"\D", "", m.group())) >= 13 else m.group(), text)
    return PHONE.sub(lambda m: "[phone]" if len(re.sub(r"\D", "", m.group())) >= 8 else m.group(), text)


def clean_email(raw: str | bytes, *, redact_personal: bool = False) -> CleanEmail:
    text = to_text(raw)
    removed = []
    text, forwarded = _parse_forward(text)
    if forwarded:
        removed.append("forward header")
    steps = (
        ("quoted reply", lambda t: _cut_at_first(t, _REPLY_MARKERS)),
        ("quoted lines", _strip_quote_blocks),
        ("signature", lambda t: _cut_at_first(t, _SIGNATURE_MARKERS)),
        ("closing", _strip_closing),
    )
    for name, step in steps:
        text, cut = step(text)
        if cut:
            removed.append(name)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:  # everything was quote or signature: keep the original rather than nothing
        text, removed = to_text(raw), []
    if redact_personal:
        text = redact(text)
    return CleanEmail(text, forwarded, removed)


def text_cleaner(redact_personal: bool):
    """The one text preparation of every door (Slack messages, forwarded emails, edits, the shortcut,
    imports): a function from raw text to the cleaned body that models read."""
    return lambda raw: clean_email(raw, redact_personal=redact_personal).body
