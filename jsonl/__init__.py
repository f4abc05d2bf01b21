"""JSON Lines, written and read by one set of rules (training data, exports, imports, metrics, the spool).

Its own package, so that trainer/ and storage/ (which may not import each other) share it.

A line ends at "\\n" and nowhere else. U+2028, U+2029 and U+0085 are characters
that Python's `str.splitlines` (and some editors) treat as line ends, so they are
written escaped (`\\u2028`) and the reader splits on "\\n" only: a message that
contains them reads back exactly as it was written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

_LINE_BREAKERS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


class JsonlError(ValueError):
    """A line that is not a JSON value. `line` is 1-based."""

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}, line {line}: {reason}")


def dumps_line(row) -> str:
    """One JSON line (with its "\\n"); non-ASCII text stays readable, line-breaking characters are escaped."""
    text = json.dumps(row, ensure_ascii=False)
    for char, escaped in _LINE_BREAKERS.items():
        if char in text:  # can only occur inside strings, where the escape means the same character
            text = text.replace(char, escaped)
    return text + "\n"


def write_jsonl(path: str | Path, rows: Iterable, *, mode: int = 0o600) -> None:
    """Write `rows` to `path`, created readable by its owner only (training data holds customer text)."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.writelines(dumps_line(r) for r in rows)


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line, split on "\\n" only ("\\r\\n" is fine too)."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


_TOO_LONG = object()  # stands in for an integer longer than Python converts, so its field can be named


def _field_of(value, target, where: str = "") -> str | None:
    """The field (`output`, `messages[1].content`) that holds `target` in a parsed value, or None."""
    if value is target:
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _field_of(
            item, target, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key
        )
        if found is not None:
            return found
    return None


def loads_line(path, number: int, line: str):
    """One line's JSON value, or JsonlError naming the line (also for nesting too deep to read, and for an
    integer longer than Python converts, which names its field)."""
    longest = []

    def parse_int(digits: str):
        limit = sys.get_int_max_str_digits()  # 0: no limit
        if limit and len(digits.lstrip("-")) > limit:
            longest.append(len(digits.lstrip("-")))
            return _TOO_LONG
        return int(digits)

    try:
        value = json.loads(line, parse_int=parse_int)
    except json.JSONDecodeError as exc:
        raise JsonlError(path, number, f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise JsonlError(path, number, "JSON nested too deeply") from None
    if longest:
        try:
            field = _field_of(value, _TOO_LONG)
        except RecursionError:
            field = None
        raise JsonlError(
            path,
            number,
            f"{f'`{field}`' if field else 'the line'} is a number of {longest[0]:,} "
            f"digits (at most {sys.get_int_max_str_digits():,})",
        )
    return value


def read_rows(path: str | Path, text: str | None = None) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line of `path` (or of `text`, read from `path`)."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    return [(number, loads_line(path, number, line)) for number, line in iter_lines(text)]
