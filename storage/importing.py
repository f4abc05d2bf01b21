"""Importing labeled (or unlabeled) examples from CSV and JSONL files.

An import is all-or-nothing: the whole file is parsed and checked first, and a
malformed row raises `ImportFormatError` with its line number before anything
is stored. Re-importing the same file stores nothing twice (each row's
external id is the file's hash and the row's line).

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

from sqlite_utils import Database

from .db import now, write
from .errors import ImportFormatError, InvalidLabelName
from .labels import check_label_name
from .messages import content_hash

MAX_TEXT_CHARS = 100_000


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
    label = label.strip() if label else None
    if label:
        try:
            check_label_name(label)
        except InvalidLabelName as exc:
            raise ImportFormatError(path, line, str(exc)) from None
    return Example(line=line, text=text.strip(), label=label or None)


def _read_csv(path: str, content: str, text_col: str, label_col: str | None) -> list[Example]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
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
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(path, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ImportFormatError(path, number, "each line must be a JSON object")
        if "messages" in row:
            text, label = _from_chatml(path, number, row["messages"])
        elif "output" in row and ("instruction" in row or "input" in row):
            text = row.get("input") or row.get("instruction")
            label = row["output"]
        else:
            raise ImportFormatError(
                path, number, "neither Alpaca (instruction/input/output) nor ChatML (messages)"
            )
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


def import_examples(db: Database, path: str | Path, examples: list[Example], *, by: str = "import") -> ImportResult:
    """Store parsed examples in one transaction, adding unseen labels to the label set."""
    file_hash = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    stamp = now()
    stored = 0
    with write(db):
        existing = {r[0] for r in db.execute("SELECT name FROM label_set")}
        new_labels = sorted({e.label for e in examples if e.label} - existing)
        for name in new_labels:
            db.execute("INSERT INTO label_set (name, description, active, created_at) VALUES (?, '', 1, ?)",
                       [name, stamp])
        db.execute("UPDATE label_set SET active = 1 WHERE name IN (SELECT DISTINCT value FROM json_each(?))",
                   [json.dumps([e.label for e in examples if e.label])])
        for e in examples:
            cursor = db.execute(
                """INSERT INTO messages (source, external_id, raw_body, clean_body, subject, content_hash,
                       received_at) VALUES ('import', ?, ?, ?, ?, ?, ?) ON CONFLICT(external_id) DO NOTHING""",
                [f"import:{file_hash}:{e.line}", e.text, e.text, e.subject,
                 content_hash(e.subject, e.text), stamp],
            )
            if cursor.rowcount == 1:
                stored += 1
                if e.label:
                    db.execute(
                        """INSERT INTO labels (message_id, label, labeled_by, method, created_at)
                           VALUES (?, ?, ?, 'import', ?)""",
                        [cursor.lastrowid, e.label, by, stamp],
                    )
    return ImportResult(rows=len(examples), stored=stored, already_present=len(examples) - stored,
                        labels_added=new_labels)
