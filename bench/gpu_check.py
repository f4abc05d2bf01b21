"""GPU host check: QLoRA steps on a 7B-architecture model and the classifier on CUDA, in under 8 minutes.

No hub access is needed: the model is Mistral-7B's architecture (hidden 4096, 32 layers, 32 query and 8
key/value heads, MLP 14336) built from its config with random weights, saved once and loaded back through
the project's loader in 4-bit NF4 with double quantization (bitsandbytes), as a GPU training run loads its
base model. The vocabulary is the tokenizer's (the embedded SmolLM2 tokenizer unless --tokenizer names
another folder), so the classifier can read real text. Random weights learn nothing useful: this checks
memory, speed and that the code runs on CUDA, not accuracy.

Reports peak GPU memory while training, training tokens per second, and the classifier's messages per
second (zero-shot, then with the adapter just trained); writes bench/results/gpu_check.json.
`--dry-run` runs the same code paths on CPU with a tiny config (no quantization: bitsandbytes 4-bit needs
CUDA), to check the script where there is no GPU; it writes nothing unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULT = REPO / "bench" / "results" / "gpu_check.json"
MISTRAL_7B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    rope_theta=10000.0,
    sliding_window=None,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
LABELS = [
    ("complaint", "the customer is unhappy"),
    ("question", "the customer asks something"),
    ("feedback", "the customer tells us what they think"),
]
MESSAGES = [
    "My card was charged twice for the same order and nobody answers my emails.",
    "How do I change the delivery address on an order I placed yesterday?",
    "Your support team was great, thanks for sorting this out so quickly!",
]


def load_tokenizer(folder: str | None):
    from transformers import AutoTokenizer

    if folder:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        from classifier.models import embedded_gguf

        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(folder: Path, tokenizer, shape: dict, device: str) -> dict:
    """Random weights in the model's architecture, saved as a Hugging Face folder (safetensors shards)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    started = time.time()
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # initialised where it is made: seconds on a GPU, minutes for 7B on CPU
        model = MistralForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="5GB")
    tokenizer.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n_params, "build_seconds": round(time.time() - started, 1)}


def train_steps(
    folder: Path, device: str, *, steps: int, batch: int, seq: int, vocab: int, gradient_checkpointing: bool
) -> tuple[dict, object]:
    """QLoRA steps (LoRA r=16 on q/k/v/o, the project's defaults) on random token ids; returns the numbers."""
    import torch
    from peft import get_peft_model

    from classifier.models import load_base_model
    from trainer.config import TrainConfig
    from trainer.methods.loop import lora_config

    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    model = load_base_model(
        str(folder),
        quantization="4bit" if cuda else "none",
        device=device,
        for_training=True,
        gradient_checkpointing=gradient_checkpointing,
    )
    load_seconds = time.time() - started
    loaded_gb = torch.cuda.memory_allocated() / 2**30 if cuda else None
    # The seed recipe, as a 7B-class model gets it: QLoRA r=16, alpha 32 on q/k/v/o, lr 2e-4.
    cfg = TrainConfig(
        labels=[{"name": n, "description": d} for n, d in LABELS], base_model=str(folder), recipe="seed"
    ).resolved(1000, n_params=sum(p.numel() for p in model.parameters()))
    model = get_peft_model(model, lora_config(cfg, model.config.num_hidden_layers))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    warmup, losses, timed = min(2, steps - 1), [], 0.0
    model.train()
    for step in range(steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(device)
        if cuda:
            torch.cuda.synchronize()
        tick = time.time()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:  # the first steps pay for kernel selection and allocator growth
            timed += time.time() - tick
        losses.append(round(loss.item(), 4))
    timed_steps = steps - warmup
    numbers = {
        "quantization": "4-bit NF4, double quantization (bitsandbytes)" if cuda else "none (dry run, CPU)",
        "load_seconds": round(load_seconds, 1),
        "memory_after_load_gb": round(loaded_gb, 2) if cuda else None,
        "trainable_parameters": trainable,
        "steps": steps,
        "timed_steps": timed_steps,
        "batch": batch,
        "sequence_length": seq,
        "gradient_checkpointing": gradient_checkpointing,
        "seconds_per_step": round(timed / timed_steps, 3),
        "tokens_per_second": round(batch * seq * timed_steps / timed, 1),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "losses": losses,
    }
    return numbers, model


def save_adapter(model, folder: Path) -> None:
    """The trained LoRA with the metadata the serving classifier reads."""
    from classifier.classify import ADAPTER_META
    from classifier.prompts import LabelInfo, PromptSpec

    model.save_pretrained(folder)
    spec = PromptSpec(tuple(LabelInfo(n, d) for n, d in LABELS), True, 1500, verbalize=True)
    (folder / ADAPTER_META).write_text(json.dumps({"prompt": spec.to_dict()}), encoding="utf-8")


def classify(folder: Path, adapter: Path, device: str, rounds: int) -> dict:
    """The project's Classifier as the bot loads it (4-bit on CUDA), zero-shot and then with the adapter."""
    import torch

    from classifier.classify import Classifier
    from classifier.prompts import LabelInfo

    labels = [LabelInfo(n, d) for n, d in LABELS]
    started = time.time()
    classifier = Classifier.load(str(folder), labels)
    numbers = {
        "load_seconds": round(time.time() - started, 1),
        "device": str(next(classifier._model.parameters()).device),
    }
    items = MESSAGES * rounds
    for name, prepare in (("zero_shot", lambda: None), ("adapter", lambda: classifier.use_adapter(adapter, 1))):
        prepare()
        classifier.classify_many(items[:3])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        tick = time.time()
        predictions = classifier.classify_many(items)
        seconds = time.time() - tick
        numbers[name] = {
            "messages": len(items),
            "messages_per_second": round(len(items) / seconds, 1),
            "labels_seen": sorted({p.label for p in predictions}),
            "adapter_version": predictions[0].adapter_version,
        }
    numbers["merged"] = classifier.merged
    return numbers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on CPU, to check the script without a GPU")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 12; 3 in a dry run)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (default 512; 64 in a dry run)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded SmolLM2 tokenizer)")
    parser.add_argument(
        "--work-dir", help="where the random model is written (about 15 GB for 7B; default: a temp dir)"
    )
    parser.add_argument("--out", help=f"result file (default {RESULT.relative_to(REPO)}; none in a dry run)")
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}). Run it on the GPU host with the CUDA build of torch, or use --dry-run.",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.dry_run else "cuda"
    steps = args.steps or (3 if args.dry_run else 12)
    seq = args.seq or (64 if args.dry_run else 512)
    started = time.time()
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work_dir) as work:
        folder, adapter = Path(work) / "model", Path(work) / "adapter"
        model_numbers = build_model(folder, tokenizer, TINY if args.dry_run else MISTRAL_7B, device)
        model_numbers["architecture"] = "tiny Mistral (dry run)" if args.dry_run else "Mistral-7B, random weights"
        print(f"model: {model_numbers}", file=sys.stderr)
        training, model = train_steps(
            folder,
            device,
            steps=steps,
            batch=args.batch,
            seq=seq,
            vocab=len(tokenizer),
            gradient_checkpointing=not args.no_gradient_checkpointing,
        )
        print(f"training: {training}", file=sys.stderr)
        save_adapter(model, adapter)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        classifier = classify(folder, adapter, device, rounds=10 if args.dry_run else 20)
        print(f"classifier: {classifier}", file=sys.stderr)
    result = {
        "dry_run": args.dry_run,
        "model": model_numbers,
        "qlora_training": training,
        "classifier": classifier,
        "total_seconds": round(time.time() - started, 1),
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
    }
    out = args.out or (None if args.dry_run else RESULT)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
