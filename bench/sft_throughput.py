"""Training throughput: supportbot's label-position loss against trl's default SFT setup, in one run.

Same model (embedded SmolLM2-135M, LoRA r=16 on q/k/v/o), same 10-per-intent Banking77 examples,
same prompt, batch 4 x accumulation 4, same number of optimizer steps; no evaluation. trl's default
is a conversational prompt/completion dataset (completion-only loss) with its own loss, which also
computes log-probs, entropy and token accuracy over the whole vocabulary at every position.
Writes bench/results/sft_throughput.json.
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


def main():
    import resource

    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from classifier.models import load_base_model, load_tokenizer, resolve_base_model
    from classifier.prompts import LabelInfo, PromptSpec, prompt_messages
    from trainer.config import TrainConfig
    from trainer.data import tokenize_examples
    from trainer.methods.loop import lora_config
    from trainer.methods.scoring import _sft_trainer_class, sft_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sft_throughput.json")
    args = parser.parse_args()

    train = per_intent(read_csv(DATA / "train.csv"), 10, seed=42)
    names = sorted({r["label"] for r in train})
    path = resolve_base_model("embedded", CACHE / "models")
    tokenizer = load_tokenizer(path)
    spec = PromptSpec(tuple(LabelInfo(n) for n in names), False, 1500, verbalize=True)
    cfg = TrainConfig(
        labels=[{"name": n} for n in names], max_steps=args.steps, epochs=1, recipe="seed", method="scoring"
    ).resolved(len(train))
    rows = tokenize_examples(tokenizer, spec, train, cfg.max_length)
    tokens_per_example = sum(len(r["input_ids"]) for r in rows) / len(rows)
    examples_seen = args.steps * cfg.batch_size * cfg.grad_accum
    results = {}
    for name in ("supportbot label-position loss", "trl default SFT"):
        torch.manual_seed(0)
        model = get_peft_model(load_base_model(path, device="cpu", for_training=True), lora_config(cfg))
        training_args = sft_config(cfg, CACHE / "throughput" / name.split()[0], len(rows), "cpu")
        training_args.eval_strategy = "no"
        training_args.save_strategy = "no"
        training_args.load_best_model_at_end = False
        if name.startswith("supportbot"):
            trainer = _sft_trainer_class()(
                model=model,
                args=training_args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                data_collator=DataCollatorForLanguageModeling(tokenizer.pad_token_id),
            )
        else:
            training_args.dataset_kwargs = None
            conversational = Dataset.from_list(
                [
                    {
                        "prompt": prompt_messages(spec, r["text"]),
                        "completion": [{"role": "assistant", "content": spec.answer(r["label"])}],
                    }
                    for r in train
                ]
            )
            trainer = SFTTrainer(
                model=model, args=training_args, train_dataset=conversational, processing_class=tokenizer
            )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        results[name] = {
            "seconds": seconds,
            "seconds_per_step": seconds / args.steps,
            "tokens_per_second": tokens_per_example * examples_seen / seconds,
            "final_loss": trainer.state.log_history[-1].get("train_loss"),
        }
        print(name, results[name], flush=True)
    ours, theirs = results.values()
    report = {
        "benchmark": "sft_throughput",
        "machine": machine(),
        "steps": args.steps,
        "examples_per_step": cfg.batch_size * cfg.grad_accum,
        "tokens_per_example": tokens_per_example,
        "runs": results,
        "tokens_per_second_ratio": ours["tokens_per_second"] / theirs["tokens_per_second"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"ratio (ours / trl default tokens per second): {report['tokens_per_second_ratio']:.2f}")


if __name__ == "__main__":
    main()
