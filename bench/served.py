"""Banking77: what the serving gate serves, every candidate beside it, calibration, and messages that fit no label.

Used by banking77.py after the default adapter's run: the run's own gate (trainer.candidates, on its
eval split) has already chosen, with its temperatures and ensemble weight; here every candidate is
scored on the 3,080 test rows exactly as the bot would serve it (the embedding classifier refitted
on all 770 labelled messages, the adapter's scores through the serving classifier). The test rows
choose nothing.

Run alone (`python bench/served.py`) it measures what needs no adapter: the embedding classifier
(cold start), its calibration, and the held-out-intents check.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

HELD_OUT_INTENTS = 10
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def _scores(name: str, role: str, logp: np.ndarray, gold: np.ndarray, names: list[str]) -> dict:
    from classifier.calibration import expected_calibration_error, selective_accuracy
    from classifier.evaluate import classification_metrics

    probs = np.exp(logp)
    m = classification_metrics([names[i] for i in gold], [names[i] for i in probs.argmax(1)], names)
    return {
        "name": name,
        "role": role,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ece": expected_calibration_error(probs, gold),
        "selective": selective_accuracy(probs, gold),
    }


def embedding_classifier(train: list[dict], test: list[dict], names: list[str], encoder: str = "minilm"):
    from classifier.embeddings import EmbeddingClassifier, embed

    started = time.perf_counter()
    x_train = embed([r["text"] for r in train], encoder)
    x_test = embed([r["text"] for r in test], encoder)
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fitted = EmbeddingClassifier.fit(x_train, [r["label"] for r in train], names)
    return fitted, x_train, x_test, {"embed_seconds": embed_seconds, "fit_seconds": time.perf_counter() - started}


def candidate_entries(
    gate: dict,
    fitted,
    x_test: np.ndarray,
    adapter_logp: np.ndarray | None,
    gold: np.ndarray,
    names: list[str],
    adapter_name: str,
    student=None,
) -> list[dict]:
    """Every candidate of the run's gate, scored on the test rows with the run's own temperatures and mix
    (`student`: the one saved with the adapter, for the distilled candidate)."""
    from classifier.calibration import log_softmax
    from classifier.ensemble import Mix

    by_kind = {c["kind"]: c for c in gate["candidates"]}
    encoder = by_kind["embeddings"]["details"].get("encoder", "all-MiniLM-L6-v2")
    entries = [
        {
            **_scores(
                f"embeddings ({encoder} + logistic regression, calibrated)",
                "baseline",
                fitted.log_probs(x_test),
                gold,
                names,
            ),
            "kind": "embeddings",
        }
    ]
    if adapter_logp is not None:
        t = by_kind["adapter"]["details"]["temperature"]
        entries.append(
            {
                **_scores(
                    f"{adapter_name} (calibrated, T={t:.2f})", "adapter", log_softmax(adapter_logp / t), gold, names
                ),
                "kind": "adapter",
            }
        )
        if "ensemble" in by_kind:
            mix = Mix.from_dict(by_kind["ensemble"]["details"]["mix"])
            entries.append(
                {
                    **_scores(
                        f"{adapter_name} + {encoder} embeddings (weight {mix.weight:.2f} on the adapter)",
                        "ensemble",
                        mix.log_probs(adapter_logp, fitted.logits(x_test)),
                        gold,
                        names,
                    ),
                    "kind": "ensemble",
                }
            )
        if "distilled" in by_kind and student is not None:
            details = by_kind["distilled"]["details"]
            mix = Mix.from_dict(details["mix"])
            entries.append(
                {
                    **_scores(
                        f"{adapter_name} + its student on {encoder} (taught on {details['pool_rows']:,} unlabelled "
                        f"texts; weight {mix.weight:.2f} on the adapter)",
                        "ensemble",
                        mix.log_probs(adapter_logp, student.logits(x_test)),
                        gold,
                        names,
                    ),
                    "kind": "distilled",
                    "protocol": "uses unlabelled in-domain text",
                }
            )
    return entries


def served_entry(gate: dict, entries: list[dict]) -> dict:
    picked = next((e for e in entries if e["kind"] == gate["kind"]), None)
    if picked is None:
        raise SystemExit(f"the gate picked {gate['kind']}, which this benchmark could not score (its student?)")
    return {
        **picked,
        "name": f"served: {picked['name']}",
        "role": "served",
        "picked": gate["picked"],
        "reason": gate["reason"],
    }


def held_out_intents(train: list[dict], test: list[dict], names: list[str], x_train, x_test, seed: int = 42) -> dict:
    """Train without some intents; how many of their test messages get *Needs review*, against in-scope ones."""
    from classifier.embeddings import EmbeddingClassifier

    held = sorted(random.Random(seed).sample(names, HELD_OUT_INTENTS))
    keep = [n for n in names if n not in held]
    train_idx = [i for i, r in enumerate(train) if r["label"] in keep]
    fitted = EmbeddingClassifier.fit(x_train[train_idx], [train[i]["label"] for i in train_idx], keep)
    in_scope = np.array([r["label"] in keep for r in test])
    confidence = np.exp(fitted.log_probs(x_test)).max(1)
    novel = fitted.novel(x_test)
    rows = []
    for threshold in THRESHOLDS:
        for rule, flagged in (
            ("confidence", confidence < threshold),
            ("confidence or novelty", (confidence < threshold) | novel),
        ):
            rows.append(
                {
                    "threshold": threshold,
                    "rule": rule,
                    "out_of_scope_flagged": float(flagged[~in_scope].mean()),
                    "in_scope_flagged": float(flagged[in_scope].mean()),
                }
            )
    rows.append(
        {
            "threshold": None,
            "rule": "novelty alone",
            "out_of_scope_flagged": float(novel[~in_scope].mean()),
            "in_scope_flagged": float(novel[in_scope].mean()),
        }
    )
    return {
        "held_out": held,
        "out_of_scope_rows": int((~in_scope).sum()),
        "in_scope_rows": int(in_scope.sum()),
        "rows": rows,
    }


def main() -> None:
    from banking77 import DATA, per_intent, read_csv

    train = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    test = read_csv(DATA / "test.csv")
    names = sorted({r["label"] for r in train})
    gold = np.array([names.index(r["label"]) for r in test])
    fitted, x_train, x_test, seconds = embedding_classifier(train, test, names)
    entry = _scores(
        "embeddings (MiniLM + logistic regression, calibrated)", "baseline", fitted.log_probs(x_test), gold, names
    )
    raw = _scores(
        "embeddings, uncalibrated",
        "baseline",
        np.log(np.clip(np.exp(fitted.logits(x_test) - fitted.logits(x_test).max(1, keepdims=True)), 1e-300, None))
        - np.log(np.exp(fitted.logits(x_test) - fitted.logits(x_test).max(1, keepdims=True)).sum(1, keepdims=True)),
        gold,
        names,
    )
    report = {
        "benchmark": "banking77_embeddings",
        "temperature": fitted.temperature,
        "novelty_threshold": fitted.min_similarity,
        **seconds,
        "models": [entry, raw],
        "held_out_intents": held_out_intents(train, test, names, x_train, x_test),
    }
    out = REPO / "bench" / "results" / "banking77_embeddings.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "held_out_intents"}, indent=1)[:3000])
    for row in report["held_out_intents"]["rows"]:
        print(row)


if __name__ == "__main__":
    main()


def add_serving(
    report: dict,
    train: list[dict],
    test: list[dict],
    result: dict,
    adapter_probs: np.ndarray | None,
    columns: list[str],
    adapter_name: str,
    adapter_dir: Path | None = None,
) -> None:
    """Append the embedding classifier, the ensemble and the served entry to `report` (banking77.json).

    `result` is the default run's result.json (its gate chose on the run's own eval split);
    `adapter_probs` the adapter's test-set probabilities, columns in `columns` order.
    """
    names = list(result["labels"])
    gold = np.array([names.index(r["label"]) for r in test])
    encoder = result["config"].get("embedding_model", "minilm")
    fitted, x_train, x_test, seconds = embedding_classifier(train, test, names, encoder)
    adapter_logp = None
    if adapter_probs is not None:
        order = [columns.index(n) for n in names]
        adapter_logp = np.log(np.clip(np.asarray(adapter_probs, dtype=np.float64)[:, order], 1e-30, None))
    student = None
    if adapter_dir is not None and (adapter_dir / "student.npz").exists():
        from classifier.encoders import encoder as encoder_named
        from classifier.student import load_student

        which = encoder_named(encoder)
        meta = json.loads((adapter_dir / "supportbot.json").read_text())
        student = load_student(adapter_dir, meta, encoder=which.name, dimensions=which.dimensions)
    entries = candidate_entries(result["gate"], fitted, x_test, adapter_logp, gold, names, adapter_name, student)
    for entry in entries:
        entry.setdefault("train_seconds", seconds["fit_seconds"] if entry["kind"] == "embeddings" else None)
        entry.setdefault("tokens_per_second", None)
    served = served_entry(result["gate"], entries)
    report["models"].extend(e for e in entries if e["kind"] != "adapter")  # the adapter has its own entry
    if adapter_logp is not None:
        calibrated = next(e for e in entries if e["kind"] == "adapter")
        for model in report["models"]:
            if model.get("default"):
                model.update(
                    ece_calibrated=calibrated["ece"],
                    ece=_scores(
                        "raw", "adapter", adapter_logp - np.log(np.exp(adapter_logp).sum(1, keepdims=True)), gold, names
                    )["ece"],
                )
    report["models"].append(served)
    report["gate"] = {k: result["gate"][k] for k in ("picked", "kind", "reason", "candidates")}
    report["held_out_intents"] = held_out_intents(train, test, names, x_train, x_test)
    report["embedding_seconds"] = seconds
