"""Turning whatever arrives (bytes, HTML, odd whitespace) into text a model can read."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_HTML_HINT = re.compile(r"<\s*(html|body|div|p|br|table|span|a|b|i|strong|em|ul|li|td|tr)\b", re.I)
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "table", "ul", "ol", "blockquote"}


class EmptyText(ValueError):
    """Nothing to classify: the text is empty or only whitespace."""


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return html.unescape("".join(parser.parts))


def to_text(value: str | bytes) -> str:
    """Decode bytes (UTF-8, bad bytes replaced), strip HTML when it looks like HTML, normalize whitespace."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if _HTML_HINT.search(value):
        value = html_to_text(value)
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in value.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def require_text(value: str | bytes) -> str:
    text = to_text(value)
    if not text:
        raise EmptyText("nothing to classify: the message is empty or only whitespace")
    return text
