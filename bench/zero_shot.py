"""Zero-shot before any label: the serving encoder's similarity to the labels' words against SmolLM2-135M.

Two ways to answer a message when no label has examples yet:
  encoder similarity  the product's zero-shot (classifier.zero_shot), with each encoder of
                      classifier/encoders.py: each label is embedded as its name in words ("card
                      arrival"), with its description when it has one; a message gets the label whose
                      vector is nearest (cosine), its probabilities the similarities at a fixed temperature.
  SmolLM2-135M        today's zero-shot: the instruction-tuned LM scores each label's words after a prompt
                      that lists the labels with their descriptions (classifier.classify, zero-shot).
Measured on Banking77's test set (labels turned into words, no descriptions) and on the demo set (its
labels' descriptions, bot/demo). The LM is slow with 77 labels, so on Banking77 it reads --lm-per-intent
messages of each intent (the encoder reads all 3,080 and also the same sample, for a like-for-like row).

    python bench/zero_shot.py [--lm-per-intent 2]      # writes bench/results/zero_shot.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "bench"))
from banking77 import DATA, per_intent, read_csv  # noqa: E402 - the same rows and sampling as banking77.py

DEMO = REPO / "bot" / "demo"


def encoder_zero_shot(encoder: str):
    """The product's zero-shot (classifier.zero_shot) with `encoder`: (texts, labels) -> (labels, log-probs)."""
    from classifier.embeddings import embed
    from classifier.prompts import LabelInfo
    from classifier.zero_shot import LabelSimilarity

    def answer(texts: list[str], labels: list[dict]):
        infos = [LabelInfo(label["name"], label.get("description") or "") for label in labels]
        similarity = LabelSimilarity.from_labels(infos, lambda t: embed(t, encoder))
        logp = similarity.log_probs(embed(texts, encoder))
        return [similarity.labels[i] for i in logp.argmax(1)], logp

    return answer


def lm_zero_shot(texts: list[str], labels: list[dict], cache: Path) -> list[str]:
    from classifier.classify import Classifier
    from classifier.models import ZERO_SHOT_MODEL, resolve_base_model
    from classifier.prompts import LabelInfo

    infos = [LabelInfo(label["name"], label.get("description") or "") for label in labels]
    classifier = Classifier.load(resolve_base_model(ZERO_SHOT_MODEL, cache), infos, threshold=0.5)
    made = classifier.classify_many(texts)
    logp = np.log(np.array([[max(p.scores[label.name], 1e-30) for label in infos] for p in made]))
    return [p.label for p in made], logp


def accuracy(predicted: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def measure(name: str, dataset: str, fn, rows: list[dict], labels: list[dict]) -> dict:
    from classifier.calibration import expected_calibration_error

    started = time.perf_counter()
    predicted, logp = fn([r["text"] for r in rows], labels)
    seconds = time.perf_counter() - started
    names = [label["name"] for label in labels]
    gold = np.array([names.index(r["label"]) for r in rows])
    probs = np.exp(logp) / np.exp(logp).sum(1, keepdims=True)
    result = {
        "name": name,
        "dataset": dataset,
        "rows": len(rows),
        "accuracy": accuracy(predicted, [r["label"] for r in rows]),
        "nll": float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-30, None)).mean()),
        "ece": expected_calibration_error(probs, gold),
        "seconds": seconds,
        "ms_per_message": 1000 * seconds / len(rows),
    }
    print(
        f"  {name} on {dataset} ({len(rows)} rows): {result['accuracy']:.2%}, ECE {result['ece']:.3f}, "
        f"{result['ms_per_message']:.1f} ms/message",
        flush=True,
    )
    return result


def main() -> None:
    from classifier.zero_shot import TEMPERATURE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-per-intent", type=int, default=2, help="Banking77 messages per intent the LM reads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "zero_shot.json")
    args = parser.parse_args()
    cache = REPO / "bench" / ".cache" / "models"

    test = read_csv(DATA / "test.csv")
    banking_labels = [{"name": n} for n in sorted({r["label"] for r in test})]
    sample = per_intent(test, args.lm_per_intent, seed=42)
    with (DEMO / "labels.csv").open(newline="", encoding="utf-8") as f:
        demo_labels = [{"name": r["name"], "description": r["description"]} for r in csv.DictReader(f)]
    with (DEMO / "emails.csv").open(newline="", encoding="utf-8") as f:
        demo = [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]

    def lm(texts, labels):
        return lm_zero_shot(texts, labels, cache)

    sampled = f"banking77 ({args.lm_per_intent} per intent)"
    from classifier.encoders import ENCODERS

    methods = []
    for alias, encoder in ENCODERS.items():
        name = f"encoder similarity ({encoder.name})"
        for dataset, rows, labels in (("banking77", test, banking_labels), (sampled, sample, banking_labels)):
            methods.append(measure(name, dataset, encoder_zero_shot(alias), rows, labels))
        methods.append(measure(name, "demo", encoder_zero_shot(alias), demo, demo_labels))
    methods.append(measure("SmolLM2-135M label scoring", sampled, lm, sample, banking_labels))
    methods.append(measure("SmolLM2-135M label scoring", "demo", lm, demo, demo_labels))
    out = {
        "benchmark": "zero-shot classification before any labelled example",
        "protocol": {
            "banking77": "test.csv, 77 intents, label names turned into words, no descriptions",
            "sample": f"{args.lm_per_intent} per intent from test.csv, seed 42 (the LM is slow with 77 labels)",
            "demo": f"bot/demo: {len(demo)} emails, {len(demo_labels)} labels with descriptions",
        },
        "temperature": TEMPERATURE,
        "methods": methods,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
