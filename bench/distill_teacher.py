"""Banking77: why the product's distilled candidate gained nothing, the teacher or the mix? (after banking77.py)

The default run of bench/banking77.py taught its student with the adapter the gate measures: the first
training, on the trainer's 616 examples, before the refit on all 770. bench/self_training.py taught its
students with the refitted adapter. Here, on the same 3,000 pool rows the run used (the pool shuffled with
seed 42, as banking77.py writes it) and the same 3,080 test rows, both students are mixed with the served
adapter's test probabilities at the run's fitted mix and at fixed weights. Reads the caches of
banking77.py's full run and of self_training.py (the refitted teacher's pool labels, the mpnet vectors).
Uses unlabelled in-domain text.

    python bench/distill_teacher.py      # seconds
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from banking77 import CACHE, DATA, machine, per_intent, read_csv, unlabelled_pool  # noqa: E402

OUT = REPO / "bench" / "results" / "distill_teacher.json"
WEIGHTS = (None, 0.5, 0.6)  # None: the weight the run's gate fitted on dev


def main() -> None:
    import numpy as np

    from classifier.ensemble import Mix
    from classifier.student import load_student, teach

    work = CACHE / "self_training"
    run = CACHE / "banking77" / "default"
    everything = read_csv(DATA / "train.csv")
    train = per_intent(everything, 10, seed=42)
    pool = unlabelled_pool(everything, train)
    result = json.loads((run / "result.json").read_text())
    rows = result["distillation"]["pool_rows"]
    order = list(range(len(pool)))
    random.Random(42).shuffle(order)
    chosen = np.array(order[:rows])
    test = read_csv(DATA / "test.csv")
    names = result["labels"]
    gold = np.array([names.index(r["label"]) for r in test])
    columns = json.loads((CACHE / "banking77" / "test_labels.json").read_text())["labels"]
    probs = np.load(CACHE / "banking77" / "test_probabilities.npy").astype(np.float64)
    adapter = np.log(np.clip(probs[:, [columns.index(n) for n in names]], 1e-30, None))
    x_train, x_pool = np.load(work / "train_mpnet_770.npy"), np.load(work / f"pool_mpnet_{len(pool)}.npy")
    x_test = np.load(work / "test_mpnet_3080.npy")
    refit_labels = np.load(work / f"pool_teacher_default_{len(pool)}.npy")[:, [columns.index(n) for n in names]]
    mix = Mix.from_dict(next(c for c in result["gate"]["candidates"] if c["kind"] == "distilled")["details"]["mix"])
    meta = json.loads((run / "adapter" / "supportbot.json").read_text())
    students = {
        "the run's student (teacher: the adapter before its refit, 616 examples)": load_student(
            run / "adapter", meta, encoder="all-mpnet-base-v2", dimensions=768
        ),
        "a student of the refitted adapter (all 770), the same pool rows": teach(
            x_train,
            [r["label"] for r in train],
            x_pool[chosen],
            [names[i] for i in refit_labels[chosen].argmax(1)],
            names,
        ),
    }
    truth = [pool[i]["label"] for i in chosen]  # read only for the pseudo-labels' precision
    variants = [{"name": "the served adapter alone", "accuracy": float((adapter.argmax(1) == gold).mean())}]
    for name, student in students.items():
        logits = student.logits(x_test)
        variants.append({"name": f"{name}, alone", "accuracy": float((logits.argmax(1) == gold).mean())})
        for weight in WEIGHTS:
            used = mix if weight is None else Mix(weight, mix.adapter_temperature, mix.embedding_temperature, 1.0)
            label = f"weight {used.weight:.2f} on the adapter" + (
                " (the gate's, fitted on dev)" if weight is None else ""
            )
            accuracy = float((used.log_probs(adapter, logits).argmax(1) == gold).mean())
            variants.append({"name": f"{name}, mixed: {label}", "accuracy": accuracy})
    report = {
        "benchmark": "distill_teacher",
        "protocol": f"Banking77: 770 labelled, {rows:,} unlabelled pool rows (the run's), 3,080 test rows; "
        "uses unlabelled in-domain text",
        "machine": machine(),
        "refit_teacher_precision": float(
            np.mean([names[i] == t for i, t in zip(refit_labels[chosen].argmax(1), truth)])
        ),
        "variants": variants,
    }
    OUT.write_text(json.dumps(report, indent=2))
    for v in variants:
        print(f"{v['accuracy']:.4f}  {v['name']}")
    print(f"Wrote {OUT}")


if __name__ == "__main__":
    main()
