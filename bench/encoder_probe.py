"""all-MiniLM-L6-v2 fine-tuned on Banking77 10-shot in a plain torch loop: the search behind the encoder recipe.

Trains on all 770 examples (10 per intent, seed 42; no split, no refit, no injection copies, no early
stopping: the product's trainer adds those) and scores the 3,080 test rows:
- `frozen`: logistic regression (C=10) on the frozen, unit-length mean-pooled embeddings (the baseline);
- a head started from that fit, trained with cross-entropy together with LoRA (r=16 on query, key, value
  and the dense layers) or the whole encoder (`--full`); `--supcon W` adds W x a supervised contrastive
  loss on the embeddings (SetFit-like, batches made of same-label pairs).
Each variant adds a row to results/encoder_probe.json (a rerun of the same variant replaces its row).

    python bench/encoder_probe.py --epochs 10 --lr 1e-3
    python bench/encoder_probe.py --epochs 10 --lr 5e-5 --full
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.banking77 import DATA, machine, per_intent, read_csv  # noqa: E402

OUT = REPO / "bench" / "results" / "encoder_probe.json"


def main() -> None:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer, get_scheduler

    from classifier.embeddings import REGULARISATION_C, model_path
    from trainer.config import ENCODER_LINEAR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="train every weight instead of LoRA")
    parser.add_argument("--supcon", type=float, default=0.0, help="weight of a supervised contrastive loss")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    test = read_csv(DATA / "test.csv")
    labels = sorted({r["label"] for r in train})
    index = {name: i for i, name in enumerate(labels)}
    y_train = torch.tensor([index[r["label"]] for r in train])
    gold = [index[r["label"]] for r in test]
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    model = AutoModel.from_pretrained(model_path())
    model.pooler = None

    def encode(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    def embed_all(texts):
        model.eval()
        with torch.no_grad():
            return torch.cat([encode(texts[i : i + 64]) for i in range(0, len(texts), 64)])

    def accuracy(predicted):
        return sum(int(p) == g for p, g in zip(predicted, gold)) / len(gold)

    texts = [r["text"] for r in train]
    fitted = LogisticRegression(C=REGULARISATION_C, max_iter=2000).fit(embed_all(texts).numpy(), y_train.numpy())
    frozen = accuracy(fitted.predict(embed_all([r["text"] for r in test]).numpy()))
    print(f"frozen + logistic regression: {frozen:.4f}", flush=True)
    head = torch.nn.Linear(fitted.coef_.shape[1], len(labels))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(fitted.coef_, dtype=torch.float32))
        head.bias.copy_(torch.tensor(fitted.intercept_, dtype=torch.float32))
    if not args.full:
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=ENCODER_LINEAR["bert"])
        )
    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=math.ceil(0.06 * steps), num_training_steps=steps)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        if args.supcon:  # same-label pairs side by side, so every batch has positives
            by_label: dict[int, list[int]] = {}
            for i in order:
                by_label.setdefault(int(y_train[i]), []).append(i)
            pairs = [ids[k : k + 2] for ids in by_label.values() for k in range(0, len(ids), 2)]
            rng.shuffle(pairs)
            order = [i for pair in pairs for i in pair]
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            chunk = order[start : start + args.batch_size]
            z = encode([texts[i] for i in chunk])
            loss = F.cross_entropy(head(z), y_train[chunk])
            if args.supcon:
                y = y_train[chunk]
                eye = torch.eye(len(chunk), dtype=torch.bool)
                logp = (z @ z.T / 0.1).masked_fill(eye, -1e9).log_softmax(-1)
                positive = (y[:, None] == y[None, :]) & ~eye
                has = positive.any(1)
                if has.any():
                    loss = loss + args.supcon * (-(logp * positive).sum(1)[has] / positive.sum(1)[has]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(chunk)
        print(f"epoch {epoch + 1}: train loss {total / len(train):.4f}", flush=True)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        tuned = accuracy(head(embed_all([r["text"] for r in test])).argmax(-1).tolist())
    variant = {
        "lr": args.lr,
        "epochs": args.epochs,
        "full": args.full,
        "supcon": args.supcon,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    row = {**variant, "frozen_accuracy": frozen, "tuned_accuracy": tuned, "train_seconds": seconds}
    print(json.dumps(row), flush=True)
    report = json.loads(OUT.read_text()) if OUT.exists() else {"benchmark": "encoder_probe", "rows": []}
    report["machine"] = machine()
    report["protocol"] = "10 per intent from train.csv (seed 42), all 770 trained on; 3,080 test rows"
    report["rows"] = [r for r in report["rows"] if {k: r.get(k) for k in variant} != variant] + [row]
    OUT.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
