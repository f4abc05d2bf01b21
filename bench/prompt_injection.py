"""Prompt injection against zero-shot answers: can an email choose its own label before any label exists?

Each crafted email of `bench.hostile.INJECTIONS` (a complaint, question or bug report, then text that
tells the model to answer `feedback`) goes through the zero-shot path as the bot serves it: the default
zero-shot model (SmolLM2-135M-Instruct), the label descriptions in the prompt, the default review
threshold. The same email without its last paragraph (the injected text) is the control. Run with two
label sets: the demo workspace's five labels, and the three the tests and the soak use.

For each email: the label, confidence and needs_review it got; whether the instruction check
(`trainer.prompts.instruction_like`) flagged it; whether the injected text changed the label; whether it would have gone to review on confidence
alone (before the check); and the control's label and confidence.
Writes bench/results/prompt_injection.json. Takes about a minute on CPU (plus a minute the first time,
to convert the packaged model).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.hostile import INJECTIONS  # noqa: E402

CACHE = REPO / "bench" / ".cache"
OUT = REPO / "bench" / "results" / "prompt_injection.json"
THREE = [("complaint", "Unhappy customer"), ("question", "Asks how or why"), ("feedback", "Opinion or praise")]


def demo_labels() -> list[tuple[str, str]]:
    with open(REPO / "bot" / "demo" / "labels.csv", encoding="utf-8") as f:
        return [(row["name"], row["description"]) for row in csv.DictReader(f)]


def run(classifier, label_set: list[tuple[str, str]], threshold: float) -> list[dict]:
    from classifier.prompts import LabelInfo, instruction_like

    classifier.use_zero_shot([LabelInfo(n, d) for n, d in label_set])
    rows = []
    for intended, text in INJECTIONS:
        control = text.rsplit("\n\n", 1)[0]
        got, plain = classifier.classify(text), classifier.classify(control)
        rows.append(
            {
                "intended": intended,
                "label": got.label,
                "confidence": round(got.confidence, 3),
                "needs_review": got.needs_review,
                "flagged_as_instructions": instruction_like(text),
                "needs_review_on_confidence_alone": got.confidence < threshold,
                "steered_to_feedback": got.label == "feedback" and intended != "feedback",
                "changed_by_injection": got.label != plain.label,
                "control_label": plain.label,
                "control_confidence": round(plain.confidence, 3),
                "control_needs_review": plain.needs_review,
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    return {
        "emails": len(rows),
        "answered_feedback": sum(r["label"] == "feedback" for r in rows),
        "needs_review": sum(r["needs_review"] for r in rows),
        "needs_review_on_confidence_alone": sum(r["needs_review_on_confidence_alone"] for r in rows),
        "changed_by_injection": sum(r["changed_by_injection"] for r in rows),
        "unflagged_steered": sum(r["steered_to_feedback"] and not r["needs_review"] for r in rows),
        "controls_needing_review": sum(r["control_needs_review"] for r in rows),
    }


def main() -> None:
    from bot.settings import load_settings
    from classifier.classify import Classifier
    from classifier.models import ZERO_SHOT_MODEL, quiet_libraries, resolve_base_model
    from classifier.prompts import LabelInfo

    quiet_libraries()
    threshold = load_settings({}, env_file=None).review_threshold
    started = time.perf_counter()
    path = resolve_base_model(ZERO_SHOT_MODEL, CACHE)
    classifier = Classifier.load(path, [LabelInfo(n, d) for n, d in THREE], threshold=threshold)
    result = {"model": ZERO_SHOT_MODEL, "review_threshold": threshold, "label_sets": {}}
    for name, label_set in (("demo (5 labels)", demo_labels()), ("tests and soak (3 labels)", THREE)):
        rows = run(classifier, label_set, threshold)
        result["label_sets"][name] = {"labels": [n for n, _ in label_set], "summary": summary(rows), "emails": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v["summary"] for k, v in result["label_sets"].items()}, indent=2))


if __name__ == "__main__":
    main()
