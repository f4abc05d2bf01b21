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


def both_poolings(model, rows, pad_id, poolings, batch_size=32):
    """Pooled hidden states of every row, for each pooling, from one forward pass."""
    import torch

    from classifier.head import body, pad_batch

    out = {pooling: [] for pooling in poolings}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_batch(rows[start : start + batch_size], pad_id, "cpu")
            hidden = body(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            pooled = {
                "mean": (hidden * weights).sum(1) / weights.sum(1),
                "last": hidden[torch.arange(len(ids)), mask.sum(1) - 1],
            }
            for pooling in poolings:
                out[pooling].append(pooled[pooling])
    return {pooling: torch.cat(parts) for pooling, parts in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m")
    parser.add_argument("--poolings", default="last,mean")
    parser.add_argument("--test-per-intent", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "banking77_probe.json")
    args = parser.parse_args()

    import torch

    from classifier.evaluate import classification_metrics
    from classifier.head import head_prompt_ids
    from classifier.models import load_base_model, load_tokenizer, resolve_base_model
    from classifier.prompts import PromptSpec
    from trainer.methods.head import fit_probe

    train = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    test = per_intent(read_csv(DATA / "test.csv"), args.test_per_intent, seed=42)
    names = sorted({r["label"] for r in train})
    spec = PromptSpec((), False, 1500)
    y = torch.tensor([names.index(r["label"]) for r in train])
    report = {
        "benchmark": "banking77_probe",
        "protocol": f"10 per intent from train.csv (seed 42); {len(test)} test "
        "rows; frozen base model, linear head fitted on its pooled hidden states",
        "machine": machine(),
        "models": [],
    }
    for model_name in args.models.split(","):
        path = resolve_base_model(model_name, CACHE / "models")
        tokenizer, model = load_tokenizer(path), load_base_model(path, device="cpu").eval()
        rows = [head_prompt_ids(tokenizer, spec, r["text"], None, 128) for r in train]
        test_rows = [head_prompt_ids(tokenizer, spec, r["text"], None, 128) for r in test]
        started = time.perf_counter()
        poolings = args.poolings.split(",")
        train_x = both_poolings(model, rows, tokenizer.pad_token_id, poolings)  # one forward pass for every pooling
        seconds = time.perf_counter() - started
        test_x = both_poolings(model, test_rows, tokenizer.pad_token_id, poolings)
        for pooling in poolings:
            x = train_x[pooling]
            head = fit_probe(x, y, len(names))
            with torch.no_grad():
                predicted = head(test_x[pooling]).argmax(-1)
            m = classification_metrics([r["label"] for r in test], [names[i] for i in predicted], names)
            row = {
                "name": f"{model_name} frozen + probe ({pooling})",
                "model": model_name,
                "pooling": pooling,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "features_seconds": seconds,
                "tokens_per_second": sum(map(len, rows)) / seconds,
            }
            print(json.dumps(row), flush=True)
            report["models"].append(row)
            args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
