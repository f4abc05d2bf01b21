"""Banking77 10-shot, no fine-tuning: a linear head fitted on each base model's frozen hidden states.

A cheap first look at which base model and pooling give the head the most to work with
(forward passes only): the same 770 training examples as banking77.py, scored on
--test-per-intent rows per intent. Writes results/banking77_probe.json.

    python bench/head_probe.py --models gemma3-270m,smollm2-135m --poolings last,mean
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import CACHE, DATA, machine, per_intent, read_csv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m")
    parser.add_argument("--poolings", default="last,mean")
    parser.add_argument("--test-per-intent", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "banking77_probe.json")
    args = parser.parse_args()

    import torch

    from trainer.data import PromptSpec
    from trainer.evaluate import classification_metrics
    from trainer.head import features, fit_probe, head_prompt_ids
    from trainer.models import load_base_model, load_tokenizer, resolve_base_model

    train = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    test = per_intent(read_csv(DATA / "test.csv"), args.test_per_intent, seed=42)
    names = sorted({r["label"] for r in train})
    spec = PromptSpec((), False, 1500)
    y = torch.tensor([names.index(r["label"]) for r in train])
    report = {"benchmark": "banking77_probe", "protocol": f"10 per intent from train.csv (seed 42); {len(test)} test "
              "rows; frozen base model, linear head fitted on its pooled hidden states", "machine": machine(),
              "models": []}
    for model_name in args.models.split(","):
        path = resolve_base_model(model_name, CACHE / "models")
        tokenizer, model = load_tokenizer(path), load_base_model(path, device="cpu").eval()
        rows = [head_prompt_ids(tokenizer, spec, r["text"], None, 128) for r in train]
        test_rows = [head_prompt_ids(tokenizer, spec, r["text"], None, 128) for r in test]
        for pooling in args.poolings.split(","):
            started = time.perf_counter()
            x = features(model, rows, tokenizer.pad_token_id, pooling, 32)
            seconds = time.perf_counter() - started
            head = fit_probe(x, y, len(names))
            with torch.no_grad():
                predicted = head(features(model, test_rows, tokenizer.pad_token_id, pooling, 32)).argmax(-1)
            m = classification_metrics([r["label"] for r in test], [names[i] for i in predicted], names)
            row = {"name": f"{model_name} frozen + probe ({pooling})", "model": model_name, "pooling": pooling,
                   "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "features_seconds": seconds,
                   "tokens_per_second": sum(map(len, rows)) / seconds}
            print(json.dumps(row), flush=True)
            report["models"].append(row)
            args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
