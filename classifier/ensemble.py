"""An ensemble of the adapter and the embedding classifier: a weighted mix of calibrated log-probabilities.

The two models err differently (one reads the message as a language model, the other places it
among the labelled examples), so a mix can beat both. Each model is calibrated first: an
over-confident model's log-probabilities would otherwise swamp the other's whatever the weight.
The weight is chosen on held-out predictions of the training side (never on the split the gate
scores), and the mix gets a temperature of its own on the same rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .calibration import fit_temperature, log_softmax, nll

WEIGHTS = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class Mix:
    weight: float  # on the adapter; 1 - weight on the embeddings
    adapter_temperature: float
    embedding_temperature: float
    temperature: float  # of the mix itself

    def log_probs(self, adapter_logits: np.ndarray, embedding_logits: np.ndarray) -> np.ndarray:
        """Calibrated log-probabilities of the mix, (n, labels); columns in the same label order."""
        mixed = self.weight * log_softmax(np.asarray(adapter_logits) / self.adapter_temperature) + (
            1 - self.weight
        ) * log_softmax(np.asarray(embedding_logits) / self.embedding_temperature)
        return log_softmax(mixed / self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Mix":
        return cls(
            **{k: float(data[k]) for k in ("weight", "adapter_temperature", "embedding_temperature", "temperature")}
        )


def fit_mix(
    adapter_logits: np.ndarray,
    embedding_logits: np.ndarray,
    gold: np.ndarray,
    *,
    embedding_temperature: float | None = None,
) -> Mix:
    """Calibrate both models, then pick the weight with the lowest NLL, on these held-out rows.

    `embedding_temperature`, when given, is the embedding classifier's own (fitted on its
    out-of-fold predictions); otherwise it is fitted here too.
    """
    gold = np.asarray(gold)
    t_adapter = fit_temperature(adapter_logits, gold)
    t_embed = embedding_temperature or fit_temperature(embedding_logits, gold)
    a = log_softmax(np.asarray(adapter_logits) / t_adapter)
    b = log_softmax(np.asarray(embedding_logits) / t_embed)
    weight = min(WEIGHTS, key=lambda w: (nll(w * a + (1 - w) * b, gold), -w))
    t_mix = fit_temperature(weight * a + (1 - weight) * b, gold)
    return Mix(float(weight), t_adapter, float(t_embed), t_mix)


def adapter_temperature(details: dict) -> float:
    """The temperature an adapter answers with alone: its own, or its mix's adapter side (one rule, read by
    the gate (trainer.candidates) and by bot.serving)."""
    return float(details.get("temperature") or (details.get("mix") or {}).get("adapter_temperature") or 1.0)
