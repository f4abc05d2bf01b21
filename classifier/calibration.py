"""Confidence that means something: temperature scaling, calibration error, selective accuracy.

A model's raw probabilities are rarely what they say (a fine-tuned LM is typically far too sure of
itself). One temperature, fitted on held-out predictions by minimising their negative
log-likelihood, rescales the log-probabilities so that answers given with 80% confidence are right
about 80% of the time. Dividing every logit by the same positive number never changes which label
is on top, so calibration costs no accuracy.

Everything here works on numpy arrays: `logits` is (n, labels) of unnormalised log-scores (log-
probabilities are fine), `gold` is (n,) of column indices.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
# Temperatures are searched on a log scale between these: wider than any model we have seen needs.
T_MIN, T_MAX = 0.05, 50.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels at `temperature`."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(gold)), gold].mean())


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature that minimises held-out NLL (1.0 when there is nothing to fit on)."""
    logits, gold = np.asarray(logits, dtype=np.float64), np.asarray(gold)
    if len(gold) == 0 or logits.shape[1] < 2:
        return 1.0
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: nll(logits, gold, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(found.x))


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width confidence bins: the gap between confidence and accuracy, weighted by size."""
    probs, gold = np.asarray(probs), np.asarray(gold)
    if len(gold) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(confidence[members].mean() - correct[members].mean())
    return float(total / len(gold))


def selective_accuracy(
    probs: np.ndarray, gold: np.ndarray, thresholds=(0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
) -> list[dict]:
    """For each review threshold: the share of answers kept (confidence at or above it) and their accuracy.

    What `SUPPORTBOT_REVIEW_THRESHOLD` trades: a higher threshold sends more messages to review and
    makes the ones answered without review more often right.
    """
    probs, gold = np.asarray(probs), np.asarray(gold)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        rows.append(
            {
                "threshold": threshold,
                "kept": float(kept.mean()) if len(gold) else 0.0,
                "accuracy": float(correct[kept].mean()) if kept.any() else None,
            }
        )
    return rows
