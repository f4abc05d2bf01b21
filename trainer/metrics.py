"""Where training metrics go: a small sink interface, and a JSONL file another process can follow.

A record is a flat dict with `kind` ("train", "eval" or "progress"), `step`,
`max_steps`, `epoch`, and the values of that kind (`train_loss`,
`learning_rate`; `eval_loss`). Reports are built from these records afterwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from jsonl import dumps_line, iter_lines


class MetricsSink(Protocol):
    def write(self, record: dict) -> None: ...


class ListSink:
    """Keeps records in memory (tests, benchmarks)."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)


class JsonlSink:
    """Appends one JSON line per record and flushes it, so a follower sees whole lines as they come."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(dumps_line(clean))
            f.flush()


def read_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete lines from byte `offset` on, and the offset after the last complete line (to follow a growing file)."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = [json.loads(line) for _, line in iter_lines(data[:end].decode("utf-8"))]
    return records, offset + end


def epoch_table(records: list[dict]) -> list[dict]:
    """Per epoch: mean train loss and the last eval loss in it."""
    table: dict[int, dict] = {}
    for r in records:
        if r.get("epoch") is None:
            continue
        epoch = max(1, math.ceil(r["epoch"] - 1e-9))
        row = table.setdefault(epoch, {"epoch": epoch, "train_losses": [], "eval_loss": None})
        if r["kind"] == "train" and r.get("train_loss") is not None:
            row["train_losses"].append(r["train_loss"])
        elif r["kind"] == "eval" and r.get("eval_loss") is not None:
            row["eval_loss"] = r["eval_loss"]
    rows = []
    for epoch in sorted(table):
        losses = table[epoch]["train_losses"]
        rows.append(
            {
                "epoch": epoch,
                "train_loss": sum(losses) / len(losses) if losses else None,
                "eval_loss": table[epoch]["eval_loss"],
            }
        )
    return rows
