"""The head method: LoRA on the LM body and a linear head on its hidden states.

A causal LM reads the message (subject, then the body cut in the middle when long)
followed by a short cue, and a linear layer maps one pooled hidden state (the
last token's, or the mean over the tokens) to one logit per label. An encoder
(the default, all-MiniLM-L6-v2) reads the message as its embedding classifier
does (subject and body, no cue), and the head reads the mean over its tokens
scaled to unit length, the sentence embedding the encoder was trained to make. One forward
pass per message and no label list in the prompt, so it trains and serves
faster than label scoring, whatever the number of labels.

The head's label set is fixed when it is trained: a label added afterwards has
no row in it, so that adapter never predicts it until the next retrain
(`Classifier.trained_labels` says which labels an adapter covers).

The adapter folder holds the LoRA weights (peft, the same kind of adapter as
label scoring, so either kind swaps into one loaded base model) and
`head.safetensors` (weight [labels, hidden], bias [labels]); `supportbot.json`
says `"method": "head"`, the labels in row order and the pooling.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from classifier.head import features, head_prompt_ids, is_encoder_model, pad_batch, pooled
from classifier.prompts import PromptSpec
from trainer.config import TrainConfig
from trainer.metrics import MetricsSink


class _Stop(Exception):
    pass


def fit_probe(x, y, n_labels: int, steps: int = 300, encoder: bool = False):
    """A linear head fitted on frozen features: L2-regularized logistic regression (like sklearn's C=1).

    An encoder's unit-length sentence embeddings get the embedding classifier's own fit instead
    (sklearn, C=10 on the raw vectors), so the head starts exactly where that baseline stands.

    Features are standardized for the fit (LM hidden states have a few very large
    dimensions), and the standardization is folded back into the weights, so the
    result reads raw hidden states.
    """
    import torch

    if encoder:
        return _encoder_probe(x, y, n_labels)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    z = (x - mean) / std
    linear = torch.nn.Linear(x.shape[1], n_labels)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    l2 = 1.0 / (2 * len(y))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(z), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weight = linear.weight / std
        linear.bias -= weight @ mean
        linear.weight.copy_(weight)
    return linear


def _encoder_probe(x, y, n_labels: int):
    import numpy as np
    import torch

    from classifier.embeddings import _logistic_regression

    gold = y.cpu().numpy()
    fitted = _logistic_regression(x.cpu().numpy(), list(gold))
    linear = torch.nn.Linear(x.shape[1], n_labels)
    weight, bias = np.zeros((n_labels, x.shape[1]), dtype=np.float32), np.full(n_labels, -30.0, dtype=np.float32)
    coef = fitted.coef_ if len(fitted.classes_) > 2 else np.vstack([-fitted.coef_[0], fitted.coef_[0]]) / 2
    intercept = fitted.intercept_ if len(fitted.classes_) > 2 else np.array([-1, 1]) * fitted.intercept_[0] / 2
    weight[fitted.classes_], bias[fitted.classes_] = coef, intercept  # a label without examples: never predicted
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return linear


def check_targets(model, targets: list[str]) -> None:
    """Every LoRA target names a linear layer of this model; else a ConfigError that lists the ones it has."""
    import torch

    from trainer.config import ConfigError

    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ConfigError(
            f"target_modules: {', '.join(missing)} not in this model; its linear layers are {', '.join(sorted(linear))}"
        )


def fit_head(
    model,
    tokenizer,
    cfg: TrainConfig,
    spec: PromptSpec,
    train: list[dict],
    evaluation: list[dict],
    run_dir: Path,
    sink: MetricsSink,
):
    """Train LoRA on `model`'s body and a head on its pooled hidden states. Returns (peft model, head, FitOutcome).

    A plain loop: batches of `batch_size`, `grad_accum` of them per optimizer step, AdamW
    with the configured schedule, an evaluation `evals_per_epoch` times an epoch, the best
    weights by eval loss kept (in memory: LoRA and head together are a few MB), early stopping,
    and the same cancel, divergence and metrics records as the scoring trainer.
    """
    import torch
    import torch.nn.functional as F
    from peft import get_peft_model
    from transformers import get_scheduler, set_seed

    from .loop import CANCEL_FILE, FitOutcome, TrainingError, lora_config, steps_per_epoch

    set_seed(cfg.seed)
    device = next(model.parameters()).device
    index = {name: i for i, name in enumerate(spec.names)}
    pad = tokenizer.pad_token_id

    encoder = is_encoder_model(model)

    def encode(examples):
        return (
            [head_prompt_ids(tokenizer, spec, e["text"], e.get("subject"), cfg.max_length, encoder) for e in examples],
            torch.tensor([index[e["label"]] for e in examples], device=device),
        )

    train_rows, train_y = encode(train)
    eval_rows, eval_y = encode(evaluation)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    check_targets(model, cfg.target_modules)
    peft_model = get_peft_model(model, lora_config(cfg, text_config.num_hidden_layers, encoder=encoder))
    hidden = text_config.hidden_size
    if cfg.head_init == "probe":  # LoRA starts as the identity, so these are the base model's features
        peft_model.eval()
        head = fit_probe(
            features(peft_model, train_rows, pad, cfg.pooling, cfg.batch_size * 2),
            train_y,
            len(spec.names),
            encoder=encoder,
        ).to(device)
    else:
        head = torch.nn.Linear(hidden, len(spec.names)).to(device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    per_epoch = steps_per_epoch(cfg, len(train_rows))
    max_steps = per_epoch * cfg.epochs
    if cfg.max_steps:
        max_steps = min(max_steps, cfg.max_steps)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * max_steps),
        num_training_steps=max_steps,
    )
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)

    def evaluate() -> float:
        peft_model.eval()
        with torch.no_grad():
            x = features(peft_model, eval_rows, pad, cfg.pooling, cfg.batch_size * 2)
            return float(F.cross_entropy(head(x), eval_y))

    def snapshot() -> dict:
        state = {f"lora.{n}": p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        state.update({f"head.{n}": p.detach().clone() for n, p in head.named_parameters()})
        return state

    rng = random.Random(cfg.seed)
    step, first_loss, problem, stop = 0, None, None, None
    best_loss, best_step, best_state, bad_evals = math.inf, None, None, 0
    tokens, micro = 0, cfg.batch_size
    sink.write({"kind": "progress", "step": 0, "max_steps": max_steps, "epoch": 0.0})
    started = time.perf_counter()
    try:
        while step < max_steps:
            order = list(range(len(train_rows)))
            rng.shuffle(order)
            per_step = micro * cfg.grad_accum
            for start in range(0, len(order), per_step):
                if step >= max_steps:
                    break
                if (run_dir / CANCEL_FILE).exists():
                    raise _Stop("cancelled")
                peft_model.train()
                group = order[start : start + per_step]
                optimizer.zero_grad()
                total = 0.0
                for m in range(0, len(group), micro):
                    chunk = group[m : m + micro]
                    rows = [train_rows[i] for i in chunk]
                    tokens += sum(len(r) for r in rows)
                    logits = head(pooled(peft_model, *pad_batch(rows, pad, device), cfg.pooling))
                    loss = F.cross_entropy(logits, train_y[chunk], label_smoothing=cfg.label_smoothing)
                    (loss * len(chunk) / len(group)).backward()
                    total += loss.item() * len(chunk) / len(group)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                epoch = step / per_epoch
                base = {"step": step, "max_steps": max_steps, "epoch": epoch}
                sink.write({**base, "kind": "train", "train_loss": total, "learning_rate": scheduler.get_last_lr()[0]})
                first_loss = total if first_loss is None and math.isfinite(total) else first_loss
                # Measured against a uniform guess too: a probe-initialized head starts near zero loss.
                reference = max(first_loss or 0.0, math.log(len(spec.names)))
                if not math.isfinite(total):
                    problem = f"the training loss became {total} at step {step}"
                elif total > cfg.divergence_factor * reference:
                    problem = (
                        f"the training loss rose to {total:.3f} at step {step}, "
                        f"{total / reference:.1f}x the larger of its first value and a uniform guess's "
                        f"({reference:.3f})"
                    )
                if problem:
                    raise TrainingError(f"training diverged: {problem}. Try a lower learning_rate.")
                if eval_rows and (step % eval_every == 0 or step == max_steps):  # none in a refit
                    eval_loss = evaluate()
                    sink.write({**base, "kind": "eval", "eval_loss": eval_loss})
                    if eval_loss < best_loss:
                        best_loss, best_step, best_state, bad_evals = eval_loss, step, snapshot(), 0
                    else:
                        bad_evals += 1
                        if (
                            cfg.early_stopping_patience
                            and bad_evals >= cfg.early_stopping_patience
                            and step < max_steps
                        ):
                            raise _Stop("early_stopping")
    except _Stop as reason:
        stop = str(reason)
    elapsed = time.perf_counter() - started
    if stop is None:
        stop = "max_steps" if cfg.max_steps and step >= cfg.max_steps else "completed"
    if best_state is not None and stop != "cancelled":
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if f"lora.{n}" in best_state:
                    p.copy_(best_state[f"lora.{n}"])
            for n, p in head.named_parameters():
                p.copy_(best_state[f"head.{n}"])
    peft_model.eval()
    head.eval()
    outcome = FitOutcome(
        stop_reason=stop,
        best_step=best_step,
        best_eval_loss=best_loss if math.isfinite(best_loss) else None,
        global_step=step,
        max_steps=max_steps,
        train_seconds=elapsed,
        train_tokens=tokens,
    )
    return peft_model, head, outcome
