"""Suspected-mislabel detection on Banking77: flip 10% of the labels, see how many the check finds.

The 10-per-intent training set (770, seed 42) gets 10% of its labels flipped to other labels (seed 42).
The data check's suspected-mislabel list, at its natural cut-off (the confident joint's estimate of how
many labels are wrong), is scored against the flipped set: precision and recall.
With --train it also trains the embedded model on the noisy set, on the set with the flagged labels
corrected (set to the check's suggestion), and on the clean set, and reports Banking77 test accuracy
for each (a full training run and 3,080 test rows each: about an hour per set on 2 CPU cores).
`--epochs` and `--test-per-intent` make a cheaper protocol (all three sets must then be trained);
`--train noisy,corrected --clean-from-banking77` takes the clean figure from bench/banking77.py's
small-model run instead (the same 770 examples, recipe and seed), saving one run.
The results file is rewritten after each run, so an interrupted run keeps what it finished.
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
    from datacheck.checks import suspected_mislabels, vectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.10)
    parser.add_argument(
        "--train",
        nargs="?",
        const="noisy,corrected,clean",
        default="",
        help="also train these sets (default: noisy,corrected,clean; slow)",
    )
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (0 = the recipe's own)")
    parser.add_argument("--test-per-intent", type=int, default=0, help="test rows per intent (0 = all 3,080)")
    parser.add_argument(
        "--clean-from-banking77",
        action="store_true",
        help="take accuracy_clean from bench/results/banking77.json (small-model run)",
    )
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
    suggested_right = sum(
        1 for f in flagged if f.ids[0] in flipped and f.detail["suggested"] == clean[f.ids[0]]["label"]
    )
    report = {
        "benchmark": "mislabels",
        "machine": machine(),
        "examples": len(noisy),
        "flipped": len(flipped),
        "method": f"{method} + logistic regression, 5-fold out-of-fold probabilities, confident learning",
        "flagged": len(found),
        "precision": true_positives / len(found) if found else 0.0,
        "recall": true_positives / len(flipped),
        "suggestion_correct_fraction": suggested_right / true_positives if true_positives else 0.0,
        "check_seconds": seconds,
        "accuracy_noisy": None,
        "accuracy_corrected": None,
        "accuracy_clean": None,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2), flush=True)
    if args.clean_from_banking77 and (args.epochs or args.test_per_intent):
        raise SystemExit("--clean-from-banking77 needs the banking77 protocol (no --epochs, --test-per-intent)")
    test = read_csv(DATA / "test.csv")
    if args.test_per_intent:
        test = per_intent(test, args.test_per_intent, seed=42)
    overrides = {"recipe": "small-model", **({"epochs": args.epochs} if args.epochs else {})}
    protocol = {"overrides": overrides, "train_examples": len(noisy), "test_rows": len(test)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep training figures an earlier run measured under the same protocol
        earlier = json.loads(args.out.read_text())
        if earlier.get("training_protocol") == protocol:
            for key in ("accuracy_noisy", "accuracy_corrected", "accuracy_clean", "runs"):
                if earlier.get(key) is not None:
                    report[key] = earlier[key]
    if args.clean_from_banking77:
        runs = json.loads((REPO / "bench" / "results" / "banking77.json").read_text())["models"]
        run = next(r for r in runs if r.get("recipe") == "small-model")
        report["accuracy_clean"] = run["accuracy"]
        report.setdefault("runs", {})["clean"] = {
            "from": "bench/results/banking77.json",
            **{k: run[k] for k in ("accuracy", "macro_f1", "train_seconds", "epochs_run", "best_epoch")},
        }
    if args.train or args.clean_from_banking77:
        report["training_protocol"] = protocol
    args.out.write_text(json.dumps(report, indent=2))
    if args.train:
        from bench.banking77 import CACHE

        corrected = [dict(r) for r in noisy]
        for f in flagged:
            corrected[f.ids[0]]["label"] = f.detail["suggested"]
        sets = {"noisy": noisy, "corrected": corrected, "clean": clean}
        for name in args.train.split(","):
            trained = train_recipe(
                f"mislabels-{name}",
                overrides,
                [{"text": r["text"], "label": r["label"]} for r in sets[name]],
                CACHE / "models",
                0,
            )
            training = trained["result"]["training"]
            measured = evaluate_adapter(trained["run_dir"] / "adapter", CACHE / "models", test)
            report[f"accuracy_{name}"] = measured["accuracy"]
            report.setdefault("runs", {})[name] = {
                "accuracy": measured["accuracy"],
                "macro_f1": measured["macro_f1"],
                "wall_seconds": trained["wall_seconds"],
                "epochs_run": (training["epochs"] or [{}])[-1].get("epoch"),
                "stop_reason": training["stop_reason"],
                "best_epoch": training["best_epoch"],
            }
            print(name, report[f"accuracy_{name}"], flush=True)
            args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
