"""Importing labeled (or unlabeled) examples from CSV and JSONL files.

The whole file is parsed and checked first: a malformed row raises
`ImportFormatError` with its line number before anything is stored. Rows are
then stored in transactions of `CHUNK_ROWS`, so the write lock is never held
for long and the bot keeps collecting messages during a large import.
Re-importing the same file stores nothing twice (each row's external id is the
file's hash and the row's line), so an import stopped halfway is finished by
running it again.

JSONL rows are told apart by content, row by row:
- Alpaca: {"instruction": ..., "input": ..., "output": label}; the text is
  `input`, or `instruction` when `input` is empty.
- ChatML: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]};
  the text is the last user turn and the label the last assistant turn.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlite_utils import Database

from jsonl import JsonlError, read_rows

from .db import now, write
from .errors import ImportFormatError, InvalidLabelName
from .labels import MAX_ACTIVE_LABELS, check_label_name
from .messages import capped, content_hash

MAX_TEXT_CHARS = 100_000
CHUNK_ROWS = 2_000  # rows per write transaction: a few milliseconds of lock each


@dataclass(frozen=True)
class Example:
    line: int
    text: str
    label: str | None
    subject: str | None = None


@dataclass(frozen=True)
class ImportResult:
    rows: int
    stored: int
    already_present: int
    labels_added: list[str]


def read_examples(path: str | Path, *, text_col: str = "text", label_col: str | None = "label") -> list[Example]:
    """Parse and check a whole CSV or JSONL file. Raises ImportFormatError naming the line.

    `label_col=None` reads texts only.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFormatError(str(path), line, "text is not UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        examples = _read_csv(str(path), content, text_col, label_col)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        examples = _read_jsonl(str(path), content)
    else:
        raise ImportFormatError(str(path), 1, f"unsupported file type {suffix or '(none)'}: use .csv or .jsonl")
    if not examples:
        raise ImportFormatError(str(path), 1, "the file holds no rows")
    return examples


def _check(path: str, line: int, text, label) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise ImportFormatError(path, line, "empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise ImportFormatError(path, line, f"text longer than {MAX_TEXT_CHARS:,} characters")
    if label is not None and not isinstance(label, str):
        raise ImportFormatError(path, line, f"label must be text, got {type(label).__name__}")
    for field, value in (("text", text), ("label", label)):
        if value is not None and (bad := _lone_surrogate(value)):
            raise ImportFormatError(
                path,
                line,
                f"{field} holds a lone surrogate ({bad}, a JSON \\u escape "
                "that is half of a character), which cannot be stored",
            )
    label = label.strip() if label else None
    if label:
        try:
            check_label_name(label)
        except InvalidLabelName as exc:
            raise ImportFormatError(path, line, str(exc)) from None
    return Example(line=line, text=text.strip(), label=label or None)


def _lone_surrogate(value: str) -> str | None:
    """The first lone surrogate in `value` ("U+D800": half a UTF-16 pair, JSON's "\\ud800" alone), which
    cannot be written as UTF-8, so SQLite cannot store it; None when there is none."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"U+{ord(value[exc.start]):04X}"
    return None


def _read_csv(path: str, content: str, text_col: str, label_col: str | None) -> list[Example]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        return _csv_rows(path, reader, text_col, label_col)
    except csv.Error as exc:  # a field over csv's size limit (128 KiB), a NUL byte, a broken quote
        raise ImportFormatError(
            path,
            reader.line_num + 1 if reader.line_num else 1,
            f"unreadable CSV ({exc}); a text can have at most {MAX_TEXT_CHARS:,} characters",
        ) from None


def _csv_rows(path: str, reader: csv.DictReader, text_col: str, label_col: str | None) -> list[Example]:
    header = reader.fieldnames or []
    if text_col not in header:
        raise ImportFormatError(path, 1, f"no column {text_col!r} (columns: {', '.join(header) or 'none'})")
    has_label = label_col is not None and label_col in header
    examples, start = [], 2
    for row in reader:
        if None in row:
            raise ImportFormatError(path, start, f"more fields than the header's {len(header)}")
        if any(v is None for v in row.values()):
            raise ImportFormatError(path, start, f"fewer fields than the header's {len(header)}")
        examples.append(_check(path, start, row[text_col], row[label_col] if has_label else None))
        start = reader.line_num + 1
    return examples


def _read_jsonl(path: str, content: str) -> list[Example]:
    examples = []
    try:
        numbered = read_rows(path, content)
    except JsonlError as exc:
        raise ImportFormatError(path, exc.line, exc.reason) from None
    for number, row in numbered:
        if not isinstance(row, dict):
            raise ImportFormatError(path, number, "each line must be a JSON object")
        if "messages" in row:
            text, label = _from_chatml(path, number, row["messages"])
        elif "output" in row and ("instruction" in row or "input" in row):
            text = row.get("input") or row.get("instruction")
            label = row["output"]
        else:
            raise ImportFormatError(path, number, "neither Alpaca (instruction/input/output) nor ChatML (messages)")
        if isinstance(row.get("label"), str):  # `supportbot export` keeps the name beside a readable answer
            label = row["label"]
        examples.append(_check(path, number, text, label))
    return examples


def _from_chatml(path: str, number: int, turns) -> tuple[str, str | None]:
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ImportFormatError(path, number, "`messages` must be a list of {role, content} objects")
    users = [t.get("content") for t in turns if t.get("role") == "user"]
    assistants = [t.get("content") for t in turns if t.get("role") == "assistant"]
    if not users:
        raise ImportFormatError(path, number, "`messages` has no user turn")
    return users[-1], (assistants[-1] if assistants else None)


def import_examples(
    db: Database,
    path: str | Path,
    examples: list[Example],
    *,
    clean: Callable[[str], str],
    by: str = "import",
    chunk_rows: int = CHUNK_ROWS,
) -> ImportResult:
    """Store parsed examples, adding unseen labels to the label set, `chunk_rows` rows per transaction.

    `clean` is the text preparation every door applies (Slack intake too: HTML, quotes, signatures and,
    when the team asks for it, redaction): the file's text is kept as the raw body, and what `clean`
    makes of it is the clean body that models, embeddings and training data read. It is handed in
    because storage knows no text preparation of its own."""
    file_hash = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    stamp = now()
    stored = 0
    used = sorted({e.label for e in examples if e.label})
    with write(db):
        active = {r[0] for r in db.execute("SELECT name FROM label_set WHERE active = 1")}
        existing = {r[0] for r in db.execute("SELECT name FROM label_set")}
        if len(active | set(used)) > MAX_ACTIVE_LABELS:
            raise ImportFormatError(
                str(path),
                1,
                f"the file uses {len(set(used) - active)} labels that are not "
                f"active; with the {len(active)} active ones that is more than "
                f"{MAX_ACTIVE_LABELS} (retire some, or merge labels)",
            )
        new_labels = sorted(set(used) - existing)
        for name in new_labels:
            db.execute(
                "INSERT INTO label_set (name, description, active, created_at) VALUES (?, '', 1, ?)", [name, stamp]
            )
        db.execute(
            "UPDATE label_set SET active = 1 WHERE name IN (SELECT DISTINCT value FROM json_each(?))",
            [json.dumps(used)],
        )
    for start in range(0, len(examples), max(1, chunk_rows)):
        chunk = examples[start : start + chunk_rows]
        prepared = [capped(e.text, clean(e.text), e.subject) for e in chunk]  # before the lock, not under it
        with write(db):  # one short transaction per chunk: other writers get the lock in between
            for e, (raw, body, subject) in zip(chunk, prepared):
                cursor = db.execute(
                    """INSERT INTO messages (source, external_id, raw_body, clean_body, subject, content_hash,
                           received_at) VALUES ('import', ?, ?, ?, ?, ?, ?) ON CONFLICT(external_id) DO NOTHING""",
                    [f"import:{file_hash}:{e.line}", raw, body, subject, content_hash(subject, body), stamp],
                )
                if cursor.rowcount == 1:
                    stored += 1
                    if e.label:
                        db.execute(
                            """INSERT INTO labels (message_id, label, labeled_by, method, created_at)
                               VALUES (?, ?, ?, 'import', ?)""",
                            [cursor.lastrowid, e.label, by, stamp],
                        )
    return ImportResult(
        rows=len(examples), stored=stored, already_present=len(examples) - stored, labels_added=new_labels
    )
