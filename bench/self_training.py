"""Banking77: does the unlabelled mail help? Distillation from the fine-tuned adapter into the embedding classifier.

Protocol: the 770 labelled examples of bench/banking77.py (10 per intent, seed 42); the other 9,233 texts
of train.csv stand for the intake messages no one labelled: their labels are never used for training,
only to report how often the pseudo-labels were right. The teacher is the default adapter that
bench/banking77.py's full run trained and tested (bench/.cache/banking77/default/adapter: all-mpnet-base-v2
fine-tuned on the 770). It labels the pool; students are logistic regressions (the embedding classifier's
estimator) on frozen all-mpnet-base-v2 embeddings of the 770 plus pseudo-labelled pool rows: all of them, or
only those the teacher gave at least a confidence threshold. Each student, and the mean of its and the
teacher's probabilities, is tested on the 3,080 test rows against the teacher on the same rows (one-sided
exact McNemar). This protocol uses unlabelled in-domain text, which the 10-shot results in the literature do
not; the table says so.

    python bench/self_training.py        # ~12 min on 2 cores (the pool's teacher labels and embeddings are cached)
    python bench/self_training.py --teacher default-seed7 --out bench/results/self_training_seed7.json
"""

from __future__ import annotations

import json
import sys
import time
from math import comb
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from banking77 import CACHE, DATA, machine, per_intent, read_csv  # noqa: E402

OUT = REPO / "bench" / "results" / "self_training.json"
WORK = CACHE / "self_training"
THRESHOLDS = (0.0, 0.5, 0.8, 0.9)


def mcnemar_p(challenger: list[bool], incumbent: list[bool]) -> float:
    b = sum(x and not y for x, y in zip(challenger, incumbent))
    c = sum(y and not x for x, y in zip(challenger, incumbent))
    return 1.0 if b + c == 0 else sum(comb(b + c, k) for k in range(b, b + c + 1)) / 2 ** (b + c)


def teacher_probabilities(texts: list[str], columns: list[str], teacher: str, what: str):
    """The teacher adapter's probabilities on `texts` (rows) over `columns`, cached by teacher, `what` and count."""
    import numpy as np
    import torch

    from classifier.classify import Classifier, read_adapter_meta
    from classifier.models import resolve_base_model
    from classifier.prompts import LabelInfo

    cached = WORK / f"{what}_teacher_{teacher}_{len(texts)}.npy"
    if cached.exists():
        return np.load(cached)
    adapter = CACHE / "banking77" / teacher / "adapter"
    meta = read_adapter_meta(adapter)
    classifier = Classifier.load(
        resolve_base_model(meta["base_model"], CACHE / "models"),
        [LabelInfo(label["name"]) for label in meta["prompt"]["labels"]],
        batch_size=32,
    )
    classifier.use_adapter(adapter, version=1)
    with torch.inference_mode():
        predictions = classifier.classify_many(texts)
    matrix = np.array([[p.scores.get(n, 0.0) for n in columns] for p in predictions], dtype=np.float32)
    np.save(cached, matrix)
    return matrix


def embeddings(name: str, texts: list[str], encoder: str = "mpnet"):
    import numpy as np

    from classifier.embeddings import embed

    cached = WORK / f"{name}_{encoder}_{len(texts)}.npy"
    if cached.exists():
        return np.load(cached)
    vectors = embed(texts, encoder)
    np.save(cached, vectors)
    return vectors


def main() -> None:
    import argparse

    import numpy as np

    from classifier.embeddings import logistic_regression
    from classifier.evaluate import classification_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="default", help="a recipe bench/banking77.py trained (full run)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    everything = read_csv(DATA / "train.csv")
    train = per_intent(everything, 10, seed=42)
    chosen = {(r["text"], r["label"]) for r in train}
    pool = [r for r in everything if (r["text"], r["label"]) not in chosen]
    test = read_csv(DATA / "test.csv")
    saved = json.loads((CACHE / "banking77" / "test_labels.json").read_text())
    columns = saved["labels"]
    if saved["rows"] != len(test):
        raise SystemExit("run bench/banking77.py (the default recipe, full test set) first")
    if args.teacher == "default":  # as the run that trained it measured it
        teacher_test = np.load(CACHE / "banking77" / "test_probabilities.npy")
    else:
        teacher_test = teacher_probabilities([r["text"] for r in test], columns, args.teacher, "test")
    gold_test = [r["label"] for r in test]
    teacher_right = [columns[i] == g for i, g in zip(teacher_test.argmax(1), gold_test)]
    print(f"{len(train)} labelled, {len(pool)} unlabelled, {len(test)} test; teacher {np.mean(teacher_right):.4f}")

    started = time.perf_counter()
    pool_probs = teacher_probabilities([r["text"] for r in pool], columns, args.teacher, "pool")
    teacher_seconds = time.perf_counter() - started
    started = time.perf_counter()
    x_train = embeddings("train", [r["text"] for r in train])
    x_pool = embeddings("pool", [r["text"] for r in pool])
    x_test = embeddings("test", [r["text"] for r in test])
    embed_seconds = time.perf_counter() - started
    pseudo = [columns[i] for i in pool_probs.argmax(1)]
    confidence = pool_probs.max(1)
    truth = [r["label"] for r in pool]  # read only to report the pseudo-labels' precision

    rows = []

    def add(name: str, probs, kept: int, precision: float | None, fit_seconds: float | None):
        predicted = [columns[i] for i in probs.argmax(1)]
        m = classification_metrics(gold_test, predicted, columns)
        right = [p == g for p, g in zip(predicted, gold_test)]
        rows.append(
            {
                "name": name,
                "pool_rows": kept,
                "pseudo_label_precision": precision,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "vs_teacher": {
                    "right_only_here": sum(x and not y for x, y in zip(right, teacher_right)),
                    "right_only_teacher": sum(y and not x for x, y in zip(right, teacher_right)),
                    "p_better": mcnemar_p(right, teacher_right),
                    "p_worse": mcnemar_p(teacher_right, right),
                },
                "fit_seconds": fit_seconds,
            }
        )
        print(
            f"  {name}: {m['accuracy']:.4f} (pool rows {kept}, p vs teacher {rows[-1]['vs_teacher']['p_better']:.3f})"
        )

    add(f"teacher: the {args.teacher} adapter (no unlabelled text)", teacher_test, 0, None, None)
    # The frozen MiniLM baseline on the same rows: the paired test of the fine-tuned adapter's lead over it.
    minilm = logistic_regression().fit(
        embeddings("train", [r["text"] for r in train], "minilm"), [r["label"] for r in train]
    )
    order = [list(minilm.classes_).index(c) for c in columns]
    x_minilm = embeddings("test", [r["text"] for r in test], "minilm")
    add(
        "all-MiniLM-L6-v2 + logistic regression on the 770 (frozen)",
        minilm.predict_proba(x_minilm)[:, order],
        0,
        None,
        None,
    )
    for threshold in (None, *THRESHOLDS):
        keep = np.zeros(len(pool), bool) if threshold is None else confidence >= threshold
        x = np.concatenate([x_train, x_pool[keep]])
        y = [r["label"] for r in train] + [p for p, k in zip(pseudo, keep) if k]
        started = time.perf_counter()
        model = logistic_regression().fit(x, y)
        fit_seconds = time.perf_counter() - started
        order = [list(model.classes_).index(c) for c in columns]
        student = model.predict_proba(x_test)[:, order]
        precision = float(np.mean([p == t for p, t, k in zip(pseudo, truth, keep) if k])) if keep.any() else None
        label = "the 770 only" if threshold is None else f"the 770 + pool rows at confidence >= {threshold}"
        add(f"mpnet + logistic regression on {label}", student, int(keep.sum()), precision, fit_seconds)
        add(
            f"mean of the teacher and that student ({label})",
            (student + teacher_test) / 2,
            int(keep.sum()),
            precision,
            None,
        )

    report = {
        "benchmark": "self_training",
        "protocol": "Banking77: 770 labelled (10 per intent, seed 42), the other 9,233 train texts unlabelled "
        "(labels read only for precision), 3,080 test rows; uses unlabelled in-domain text",
        "machine": machine(),
        "teacher": args.teacher,
        "teacher_seconds": teacher_seconds,
        "embed_seconds": embed_seconds,
        "variants": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
