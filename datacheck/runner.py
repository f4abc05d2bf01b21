"""The data check as the CLI (`supportbot datacheck`) and /datacheck run it: on the database's labeled messages."""

from __future__ import annotations


def run_check(db, fast: bool = False) -> dict:
    """All checks; `fast` keeps to those that need no model (exact duplicates, conflicts, thin labels)."""
    from datacheck.checks import KINDS, check_data, exact_groups, label_counts
    from storage.labels import training_examples

    rows = training_examples(db)
    if not fast:
        return check_data(rows)
    findings = exact_groups(rows) + label_counts(rows, 2, 10.0)
    return {
        "examples": len(rows),
        "method": None,
        "findings": [f.to_dict() for f in findings],
        "summary": {k: sum(f.kind == k for f in findings) for k in KINDS},
    }


def summary_line(report: dict) -> str:
    parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in report["summary"].items() if n]
    return f"{report['examples']} labeled messages checked: " + (", ".join(parts) if parts else "no problems found")
