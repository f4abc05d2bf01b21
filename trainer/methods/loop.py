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


def _callbacks(cfg: TrainConfig, sink: MetricsSink, run_dir: Path):
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Report(TrainerCallback):
        """Metrics to the sink; cancel requests and diverging loss stop training at the next step."""

        def __init__(self):
            self.first_loss = None
            self.problem = None

        def on_train_begin(self, args, state, control, **kwargs):
            sink.write({"kind": "progress", "step": 0, "max_steps": state.max_steps, "epoch": 0.0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            base = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
            if "loss" in logs:
                loss = float(logs["loss"])
                sink.write({**base, "kind": "train", "train_loss": loss, "learning_rate": logs.get("learning_rate")})
                if self.first_loss is None and math.isfinite(loss):
                    self.first_loss = loss
                if not math.isfinite(loss):
                    self.problem = f"the training loss became {loss} at step {state.global_step}"
                elif self.first_loss and loss > cfg.divergence_factor * self.first_loss:
                    self.problem = (
                        f"the training loss rose to {loss:.3f} at step {state.global_step}, "
                        f"{loss / self.first_loss:.1f}x its first value {self.first_loss:.3f}"
                    )
                if self.problem:
                    control.should_training_stop = True
            if "eval_loss" in logs:
                sink.write({**base, "kind": "eval", "eval_loss": float(logs["eval_loss"])})

        def on_step_end(self, args, state, control, **kwargs):
            if (run_dir / CANCEL_FILE).exists():
                control.should_training_stop = True
            return control

    report = Report()
    stopper = (
        EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)
        if cfg.early_stopping_patience
        else None
    )
    return report, stopper
