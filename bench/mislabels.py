"""Suspected-mislabel detection on Banking77: flip 10% of the labels, see how many the check finds.

The 10-per-intent training set (770, seed 42) gets 10% of its labels flipped to other labels (seed 42).
The data check's suspected-mislabel list, at its natural cut-off (the confident joint's estimate of how
many labels are wrong), is scored against the flipped set: precision and recall.
With --train it also trains the embedded model on the noisy set, on the set with the flagged labels
corrected (set to the check's suggestion), and on the clean set, and reports Banking77 test accuracy
for each (three full training runs: about two hours on 2 CPU cores).
Writes bench/results/mislabels.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import DATA, evaluate_adapter, machine, per_intent, read_csv, train_recipe  # noqa: E402


def flip(rows: list[dict], share: float, seed: int) -> tuple[list[dict], set[int]]:
    rng = random.Random(seed)
    names = sorted({r["label"] for r in rows})
    noisy = [dict(r, id=i) for i, r in enumerate(rows)]
    flipped = set(rng.sample(range(len(rows)), round(len(rows) * share)))
    for i in flipped:
        noisy[i]["label"] = rng.choice([n for n in names if n != rows[i]["label"]])
    return noisy, flipped


def main():
    from trainer.datacheck import suspected_mislabels, vectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.10)
    parser.add_argument("--train", action="store_true", help="also train noisy / corrected / clean (slow)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mislabels.json")
    args = parser.parse_args()

    clean = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    noisy, flipped = flip(clean, args.share, seed=42)
    started = time.perf_counter()
    vecs, method = vectors([r["text"] for r in noisy])
    flagged = suspected_mislabels(noisy, vecs)
    seconds = time.perf_counter() - started
    found = {f.ids[0] for f in flagged}
    true_positives = len(found & flipped)
    suggested_right = sum(1 for f in flagged if f.ids[0] in flipped and f.detail["suggested"] == clean[f.ids[0]]["label"])
    report = {"benchmark": "mislabels", "machine": machine(), "examples": len(noisy), "flipped": len(flipped),
              "method": f"{method} + logistic regression, 5-fold out-of-fold probabilities, confident learning",
              "flagged": len(found), "precision": true_positives / len(found) if found else 0.0,
              "recall": true_positives / len(flipped), "suggestion_correct_fraction":
                  suggested_right / true_positives if true_positives else 0.0, "check_seconds": seconds,
              "accuracy_noisy": None, "accuracy_corrected": None, "accuracy_clean": None}
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2), flush=True)
    if args.train:
        from bench.banking77 import CACHE

        corrected = [dict(r) for r in noisy]
        for f in flagged:
            corrected[f.ids[0]]["label"] = f.detail["suggested"]
        test = read_csv(DATA / "test.csv")
        for name, rows in (("noisy", noisy), ("corrected", corrected), ("clean", clean)):
            trained = train_recipe(f"mislabels-{name}", {"recipe": "small-model"},
                                   [{"text": r["text"], "label": r["label"]} for r in rows], CACHE / "models", 0)
            report[f"accuracy_{name}"] = evaluate_adapter(trained["run_dir"] / "adapter", CACHE / "models",
                                                          test)["accuracy"]
            print(name, report[f"accuracy_{name}"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
