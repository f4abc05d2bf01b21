"""Can these examples train a classifier at all? The check the CLI, `/retrain` and the trainer share."""

from __future__ import annotations

from collections import Counter


class DataError(ValueError):
    """Examples the trainer cannot learn from. The message says which and why."""


def check_examples(
    examples: list[dict], label_names: list[str], *, what: str = "training data", min_per_label: int = 2
) -> None:
    """Raise DataError when the examples cannot train a classifier over `label_names`."""
    if not examples:
        raise DataError(f"{what} is empty: label some messages first")
    empty = [i for i, e in enumerate(examples) if not e.get("text", "").strip()]
    if empty:
        raise DataError(f"{what}: {len(empty)} example(s) with empty text (first at position {empty[0] + 1})")
    counts = Counter(e["label"] for e in examples)
    unknown = sorted(set(counts) - set(label_names))
    if unknown:
        raise DataError(
            f"{what}: label(s) not in the label set: {', '.join(unknown)} (label set: {', '.join(label_names)})"
        )
    if len(counts) < 2:
        only = next(iter(counts))
        raise DataError(f"{what}: every example is labeled {only!r}; a classifier needs at least 2 labels in use")
    few = sorted(name for name, n in counts.items() if n < min_per_label)
    if few:
        raise DataError(
            f"{what}: label(s) with fewer than {min_per_label} examples, too few to split into "
            f"train and eval: {', '.join(f'{n} ({counts[n]})' for n in few)}"
        )
