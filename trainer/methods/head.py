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
from pathlib import Path

from classifier.head import features, head_prompt_ids, is_encoder_model, pad_batch
from classifier.prompts import PromptSpec
from trainer.config import TrainConfig
from trainer.metrics import MetricsSink

from .loop import callbacks, lora_config, training_arguments
from .loop import train as train_with


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
    """A linear layer started at logistic regression on the frozen features (the embedding classifier's fit)."""
    import numpy as np
    import torch

    from classifier.embeddings import UNSEEN, EmbeddingClassifier

    fitted = EmbeddingClassifier.fit(x.cpu().numpy(), y.cpu().tolist(), list(range(n_labels)), calibrate=False)
    linear = torch.nn.Linear(x.shape[1], n_labels)
    # a label without examples is never predicted; -30 rather than UNSEEN keeps the trainable bias in a sane range
    bias = np.where(fitted.intercept <= UNSEEN, -30.0, fitted.intercept)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fitted.coef.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
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


def _head_model_class():
    import torch
    import torch.nn.functional as F

    from classifier.head import pooled

    class HeadModel(torch.nn.Module):
        """The LM body (with LoRA) and the linear head as one module whose forward returns the loss, for Trainer."""

        def __init__(self, body, head, pooling: str, label_smoothing: float, contrastive=None, weight: float = 0.0):
            super().__init__()
            self.body, self.head, self.pooling, self.label_smoothing = body, head, pooling, label_smoothing
            self.contrastive, self.weight = contrastive, weight
            # Trainer must not move a 4-bit model: it reads this attribute off the model it is given.
            self.quantization_method = getattr(body, "quantization_method", None)

        def forward(self, input_ids, attention_mask, labels=None):
            embeddings = pooled(self.body, input_ids, attention_mask, self.pooling)
            logits = self.head(embeddings)
            if labels is None:
                return {"logits": logits}
            if not self.training:  # eval loss is the plain cross-entropy, whatever trains: early stopping reads it
                return {"loss": F.cross_entropy(logits, labels), "logits": logits}
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            if self.contrastive is not None:
                loss = loss + self.weight * self.contrastive.compute_loss_from_embeddings([embeddings], labels)
            return {"loss": loss, "logits": logits}

    return HeadModel


def contrastive_loss():
    """sentence-transformers' batch-all triplet loss on cosine distance: every same-label pair of a batch is
    pulled closer than each other-label example by a margin (the embeddings are unit length)."""
    from sentence_transformers.sentence_transformer.losses import (
        BatchAllTripletLoss,
        BatchHardTripletLossDistanceFunction,
    )

    return BatchAllTripletLoss(None, distance_metric=BatchHardTripletLossDistanceFunction.cosine_distance, margin=0.25)


def _grouped_trainer_class():
    from transformers import Trainer

    class GroupedTrainer(Trainer):
        """Trainer whose training batches hold two or more examples of each label in them
        (sentence-transformers' GroupByLabelBatchSampler), so the contrastive term has pairs to compare."""

        def get_train_dataloader(self):
            import torch
            from datasets import Dataset
            from sentence_transformers.base.sampler import GroupByLabelBatchSampler
            from torch.utils.data import DataLoader

            dataset = Dataset.from_list(self.train_dataset)
            sampler = GroupByLabelBatchSampler(
                dataset,
                batch_size=self.args.per_device_train_batch_size,
                drop_last=False,
                valid_label_columns=["labels"],
                generator=torch.Generator(),
                seed=self.args.seed,
            )
            loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator)
            return self.accelerator.prepare(loader)

    return GroupedTrainer


def _collate(pad: int):
    import torch

    def collate(rows: list[dict]) -> dict:
        ids, mask = pad_batch([r["input_ids"] for r in rows], pad, "cpu")  # Trainer moves the batch
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}

    return collate


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

    The same loop as the scoring method (transformers' Trainer with the callbacks of `trainer.methods.loop`:
    progress records, cancel, divergence, the best weights by eval loss kept, early stopping); only the
    model's forward differs. A refit passes no evaluation rows: it trains for its steps and keeps the last.
    """
    import torch
    from peft import get_peft_model
    from transformers import Trainer, set_seed

    set_seed(cfg.seed)
    device = next(model.parameters()).device
    index = {name: i for i, name in enumerate(spec.names)}
    encoder = is_encoder_model(model)

    def encode(examples):
        return [
            {
                "input_ids": head_prompt_ids(tokenizer, spec, e["text"], e.get("subject"), cfg.max_length, encoder),
                "labels": index[e["label"]],
            }
            for e in examples
        ]

    train_rows, eval_rows = encode(train), encode(evaluation)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    check_targets(model, cfg.target_modules)
    peft_model = get_peft_model(model, lora_config(cfg, text_config.num_hidden_layers, encoder=encoder))
    if cfg.head_init == "probe":  # LoRA starts as the identity, so these are the base model's features
        peft_model.eval()
        ids = [r["input_ids"] for r in train_rows]
        x = features(peft_model, ids, tokenizer.pad_token_id, cfg.pooling, cfg.batch_size * 2)
        y = torch.tensor([r["labels"] for r in train_rows], device=device)
        head = fit_probe(x, y, len(spec.names), encoder=encoder).to(device)
    else:
        head = torch.nn.Linear(text_config.hidden_size, len(spec.names)).to(device)
    report, keep = callbacks(cfg, sink, run_dir, floor=math.log(len(spec.names)))
    contrastive = contrastive_loss() if cfg.contrastive_weight else None
    trainer = (_grouped_trainer_class() if contrastive else Trainer)(
        model=_head_model_class()(
            peft_model, head, cfg.pooling, cfg.label_smoothing, contrastive, cfg.contrastive_weight
        ),
        args=training_arguments(cfg, run_dir / "checkpoints", len(train_rows), device.type, bool(eval_rows)),
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=_collate(tokenizer.pad_token_id),
        callbacks=[report, keep],
    )
    outcome = train_with(trainer, cfg, run_dir, report, keep, sum(len(r["input_ids"]) for r in train_rows))
    head.eval()
    return peft_model, head, outcome
