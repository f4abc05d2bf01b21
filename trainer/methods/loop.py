"""What every training method shares: the outcome record, the LoRA config, and the callbacks on the trainer.

The scoring method (trl's SFTTrainer) and the head method (transformers' Trainer) both run through these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trainer.config import TrainConfig
from trainer.metrics import MetricsSink

CANCEL_FILE = "cancel"
DIVERGENCE_WINDOW = 5  # steps whose mean loss the divergence check reads


class TrainingError(RuntimeError):
    """Training ended without a usable adapter; the message says why and what to try."""


@dataclass
class FitOutcome:
    stop_reason: str  # "completed", "early_stopping", "cancelled", "max_steps"
    best_step: int | None
    best_eval_loss: float | None
    global_step: int
    max_steps: int
    train_seconds: float
    train_tokens: int  # real (non-padding) tokens seen in training, for tokens/s


def lora_config(cfg: TrainConfig, n_layers: int | None = None, encoder: bool = False):
    from peft import LoraConfig, TaskType

    top = {}
    if cfg.lora_layers and n_layers and cfg.lora_layers < n_layers:
        top = {
            "layers_to_transform": list(range(n_layers - cfg.lora_layers, n_layers)),
            "layers_pattern": "layer" if encoder else "layers",
        }  # BERT: encoder.layer.N; Llama: layers.N
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type=TaskType.FEATURE_EXTRACTION if encoder else TaskType.CAUSAL_LM,
        **top,
    )


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    return max(1, math.ceil(n_train / (cfg.batch_size * cfg.grad_accum)))


def max_steps_for(cfg: TrainConfig, n_train: int) -> int:
    """The epochs' steps, capped by `max_steps` when it is set (it never makes a run longer)."""
    steps = steps_per_epoch(cfg, n_train) * cfg.epochs
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def training_arguments(cfg: TrainConfig, out_dir: Path, n_train: int, device: str, evaluate: bool, cls=None, **extra):
    """The TrainingArguments (or a subclass such as trl's SFTConfig) every method shares, from the config.

    No checkpoints are written: `KeepBest` keeps the best weights in memory (LoRA and a head are a few MB),
    so early stopping needs no disk and a full disk cannot stop a run between two evaluations.
    """
    import torch
    from transformers import TrainingArguments

    from classifier.models import compute_dtype

    eval_every = max(1, steps_per_epoch(cfg, n_train) // cfg.evals_per_epoch)
    dtype = compute_dtype(cfg.compute_dtype, device)
    return (cls or TrainingArguments)(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        num_train_epochs=cfg.epochs,
        max_steps=max_steps_for(cfg, n_train),
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_every,
        save_strategy="no",
        logging_steps=1,
        prediction_loss_only=True,
        report_to=[],
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=device == "cuda" and dtype == torch.bfloat16,
        fp16=device == "cuda" and dtype == torch.float16,
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **extra,
    )


def callbacks(cfg: TrainConfig, sink: MetricsSink, run_dir: Path, floor: float = 0.0):
    """(Report, KeepBest): the callbacks every method's trainer runs with.

    `floor` is the least loss the divergence check measures against: a head that starts from a fitted
    probe begins near zero loss, so it is measured against a uniform guess's loss too.
    """
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        """Metrics to the sink; cancel requests and diverging loss stop training at the next step."""

        def __init__(self):
            self.first_loss = None
            self.problem = None
            self.recent = []

        def on_train_begin(self, args, state, control, **kwargs):
            sink.write({"kind": "progress", "step": 0, "max_steps": state.max_steps, "epoch": 0.0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            base = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
            if "loss" in logs:
                loss = float(logs["loss"])
                sink.write({**base, "kind": "train", "train_loss": loss, "learning_rate": logs.get("learning_rate")})
                self.check(loss, state.global_step)
                if self.problem:
                    control.should_training_stop = True
            if "eval_loss" in logs:
                sink.write({**base, "kind": "eval", "eval_loss": float(logs["eval_loss"])})

        def check(self, loss: float, step: int) -> None:
            """A loss that is not a number stops at once; a rising one when the mean of the last steps rose.

            One batch of a few examples can be hard (a loss several times the first), so one step's loss
            alone is noise, not divergence.
            """
            if self.first_loss is None and math.isfinite(loss):
                self.first_loss = loss
            self.recent = (self.recent + [loss])[-DIVERGENCE_WINDOW:]
            recent = sum(self.recent) / len(self.recent)
            reference = max(self.first_loss or 0.0, floor)
            if not math.isfinite(loss):
                self.problem = f"the training loss became {loss} at step {step}"
            elif reference and len(self.recent) == DIVERGENCE_WINDOW and recent > cfg.divergence_factor * reference:
                against = (
                    f"its first value {reference:.3f}"
                    if reference == self.first_loss
                    else f"the larger of its first value and a uniform guess's ({reference:.3f})"
                )
                self.problem = (
                    f"the training loss rose to {recent:.3f} (the mean of the last {DIVERGENCE_WINDOW} steps) "
                    f"at step {step}, {recent / reference:.1f}x {against}"
                )

        def on_step_end(self, args, state, control, **kwargs):
            if (run_dir / CANCEL_FILE).exists():
                control.should_training_stop = True
            elif state.global_step >= state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True  # the last step is always measured, whatever eval_steps says
            return control

    class KeepBest(TrainerCallback):
        """The weights with the lowest eval loss, kept in memory and put back when training ends; early stopping."""

        def __init__(self, patience: int):
            self.patience, self.bad_evals, self.stopped_early = patience, 0, False
            self.best_loss, self.best_step, self.best = math.inf, None, None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            if loss < self.best_loss:
                self.best_loss, self.best_step, self.bad_evals = float(loss), state.global_step, 0
                self.best = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
            else:
                self.bad_evals += 1
                if self.patience and self.bad_evals >= self.patience and state.global_step < state.max_steps:
                    self.stopped_early = control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kwargs):
            import torch

            if self.best is None:
                return
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.best:
                        p.copy_(self.best[n])

    return Report(), KeepBest(cfg.early_stopping_patience)


def train(trainer, cfg: TrainConfig, run_dir: Path, report, keep, tokens_per_epoch: int) -> FitOutcome:
    """Run `trainer` (its callbacks from `callbacks`) and say how it ended; a run with no usable weights raises."""
    import time

    import torch
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # Report writes the records; printing them again only fills the log
    started = time.perf_counter()
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of memory during training ({exc}). Try a smaller batch_size (with a larger "
            "grad_accum), gradient_checkpointing, 4-bit quantization or a shorter max_length."
        ) from None
    elapsed = time.perf_counter() - started
    if report.problem:
        raise TrainingError(f"training diverged: {report.problem}. Try a lower learning_rate.")
    state = trainer.state
    if (run_dir / CANCEL_FILE).exists():
        reason = "cancelled"
    elif keep.stopped_early:
        reason = "early_stopping"
    elif cfg.max_steps and state.global_step >= cfg.max_steps:
        reason = "max_steps"
    else:
        reason = "completed"
    trainer.model.eval()
    return FitOutcome(
        stop_reason=reason,
        best_step=keep.best_step,
        best_eval_loss=keep.best_loss if math.isfinite(keep.best_loss) else None,
        global_step=state.global_step,
        max_steps=state.max_steps,
        train_seconds=elapsed,
        train_tokens=int(tokens_per_epoch * (state.epoch or 0)),
    )
