"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Metrics over `labels` (in that order). Labels never seen in gold or predicted still get a row."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    names = list(labels) + sorted((set(gold) | set(predicted)) - set(labels))
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=names, zero_division=0)
    present = [i for i, name in enumerate(names) if support[i] > 0]
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    correct = sum(g == p for g, p in zip(gold, predicted))
    return {
        "n": len(gold),
        "accuracy": correct / len(gold) if gold else 0.0,
        # Macro over the classes present in the gold labels, so an unused label does not count as a zero.
        "macro_f1": float(sum(f1[i] for i in present) / len(present)) if present else 0.0,
        "per_class": per_class,
        "confusion": {"labels": names, "matrix": confusion_matrix(gold, predicted, labels=names).tolist()},
    }


def worst_classes(metrics: dict, n: int = 5) -> list[tuple[str, float, int]]:
    """The n classes with the lowest F1 among those with gold examples: (name, f1, support)."""
    rows = [(name, m["f1"], m["support"]) for name, m in metrics["per_class"].items() if m["support"] > 0]
    return sorted(rows, key=lambda r: (r[1], -r[2]))[:n]
