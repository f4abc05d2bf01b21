"""Turning whatever arrives (bytes, HTML, odd whitespace) into text a model can read.

Every step here is linear in its input, and the input is cut at `MAX_PARSE_CHARS` first: cleaning runs
on every message the bot receives, so a hostile body (`<a ` repeated, say) must not cost more than a
plain one of the same size. That is why HTML is read by the small scanner below and not by
`html.parser`, which rescans an unclosed tag to the end of the input once per `<` (quadratic).
"""

from __future__ import annotations

import html
import re

MAX_PARSE_CHARS = 200_000  # what is read of one message (storage keeps the raw body up to the same size)

_HTML_HINT = re.compile(r"<\s*(html|body|div|p|br|table|span|a|b|i|strong|em|ul|li|td|tr)\b", re.I)
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "table", "ul", "ol", "blockquote"}
_SKIPPED = ("script", "style", "head")  # their content is not text anyone wrote
# A comment's start, a tag (name, then anything up to the next `>` that is not a `<`), or a declaration.
# The lookahead after the name keeps the two quantifiers from splitting the same run of characters
# in every possible way when no `>` follows (which would make a single failed match quadratic).
_TAG = re.compile(r"<(?:!--|(/?)([a-zA-Z][\w:-]*)(?![\w:-])[^<>]*>|[!?][^<>]*>)")
_SKIP_END = {name: re.compile(rf"</{name}(?![\w:-])[^<>]*>", re.I) for name in _SKIPPED}
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


class EmptyText(ValueError):
    """Nothing to classify: the text is empty or only whitespace."""


def html_to_text(markup: str) -> str:
    """The text of an HTML document: tags dropped, block tags as line breaks, script/style/head and
    comments skipped, character references decoded. One pass: every search starts where the last ended."""
    parts, pos = [], 0
    while True:
        match = _TAG.search(markup, pos)
        if match is None:
            parts.append(markup[pos:])
            break
        parts.append(markup[pos : match.start()])
        pos = match.end()
        if match.group() == "<!--":
            end = markup.find("-->", pos)
            if end < 0:  # never closed: text, as html.parser reads it
                parts.append(markup[match.start() :])
                break
            pos = end + 3
            continue
        closing, name = match.group(1), (match.group(2) or "").lower()
        if name in _SKIP_END and not closing:
            end = _SKIP_END[name].search(markup, pos)
            pos = len(markup) if end is None else end.end()
        elif name in _BLOCK:
            parts.append("\n")
    return html.unescape("".join(parts))


def to_text(value: str | bytes) -> str:
    """Decode bytes (UTF-8, bad bytes replaced), strip HTML when it looks like HTML, normalize whitespace.

    Only the first `MAX_PARSE_CHARS` characters are read."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: MAX_PARSE_CHARS * 4]).decode(
            "utf-8", errors="replace"
        )  # UTF-8: at most 4 bytes a character
    value = value[:MAX_PARSE_CHARS]
    if _HTML_HINT.search(value):
        value = html_to_text(value)
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [_SPACES.sub(" ", line).strip() for line in value.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def require_text(value: str | bytes) -> str:
    text = to_text(value)
    if not text:
        raise EmptyText("nothing to classify: the message is empty or only whitespace")
    return text
