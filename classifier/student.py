"""The student: the embedding classifier taught by the adapter on the messages no one labelled.

The bot keeps every message it receives, and most are never labelled. A `/retrain` hands the newest
of them (with the vectors intake stored) to the run; the adapter it trained labels them, and a
logistic regression on the embeddings learns from the labelled messages and those pseudo-labels
together. Mixed with the adapter (classifier.ensemble.Mix, weight and temperatures fitted on dev) it
is the gate's `distilled` candidate. Measured on Banking77 10-shot (bench/README.md), the mix is
right more often than the adapter alone beyond noise, where frozen embeddings fitted on the labels
alone gain nothing significant.

Saved inside the adapter's folder (so the folder checksum the registry records covers it) as
`student.npz`: the coefficients and intercepts, with the labels, the encoder and the rows it learnt
from in supportbot.json's "student" entry. Read back only through `load_student`, which checks every
part before the bot trusts it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .embeddings import EmbeddingClassifier

STUDENT_FILE = "student.npz"
MIN_POOL = 100  # fewer unlabelled messages than this teach the student next to nothing: no candidate


class StudentInvalid(ValueError):
    """A saved student that cannot be trusted: missing, malformed, or not the adapter's labels or encoder."""


def teach(
    labelled: np.ndarray, gold: list[str], pool: np.ndarray, pseudo: list[str], labels: list[str]
) -> EmbeddingClassifier:
    """Fit the student on the labelled vectors and the pool's pseudo-labels. Uncalibrated: the mix
    that uses it fits its temperature on dev, and the novelty check stays the live classifier's."""
    vectors = np.concatenate([np.asarray(labelled, dtype=np.float32), np.asarray(pool, dtype=np.float32)])
    student = EmbeddingClassifier.fit(vectors, list(gold) + list(pseudo), labels, calibrate=False)
    student.reference = np.zeros((0, vectors.shape[1]), dtype=np.float32)  # no copy of the pool is kept
    return student


def save_student(student: EmbeddingClassifier, folder: Path) -> None:
    np.savez(
        Path(folder) / STUDENT_FILE,
        coef=np.asarray(student.coef, dtype="<f4"),
        intercept=np.asarray(student.intercept, dtype="<f4"),
    )


def describe(student: EmbeddingClassifier, encoder: str, pool_rows: int, labelled_rows: int) -> dict:
    """The "student" entry of the adapter's supportbot.json."""
    return {
        "file": STUDENT_FILE,
        "labels": list(student.labels),
        "encoder": encoder,
        "dimensions": int(student.coef.shape[1]),
        "pool_rows": pool_rows,
        "labelled_rows": labelled_rows,
    }


def load_student(folder: str | Path, meta: dict, *, encoder: str, dimensions: int) -> EmbeddingClassifier:
    """The student saved in the adapter `folder` whose supportbot.json is `meta`, checked against the
    adapter's labels and the encoder the bot embeds with. Raises StudentInvalid saying what is wrong,
    whatever is wrong (a malformed entry, an empty or truncated file)."""
    try:
        return _load_student(folder, meta, encoder=encoder, dimensions=dimensions)
    except StudentInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - damage takes many forms (EOFError, BadZipFile, TypeError...)
        raise StudentInvalid(f"{STUDENT_FILE} cannot be read: {type(exc).__name__}: {exc}"[:300]) from None


def _load_student(folder, meta: dict, *, encoder: str, dimensions: int) -> EmbeddingClassifier:
    if not isinstance(meta, dict):
        raise StudentInvalid("the adapter's supportbot.json is not an object")
    entry = meta.get("student")
    if not isinstance(entry, dict):
        raise StudentInvalid("the adapter has no student")
    labels = entry.get("labels")
    adapter_labels = (meta.get("head") or {}).get("labels") or [x.get("name") for x in meta["prompt"]["labels"]]
    if not isinstance(labels, list) or labels != list(adapter_labels):
        raise StudentInvalid("its labels are not the adapter's")
    if entry.get("encoder") != encoder:
        raise StudentInvalid(f"it was fitted on {entry.get('encoder')!r} vectors; the bot embeds with {encoder}")
    if entry.get("dimensions") != dimensions:
        raise StudentInvalid(f"it reads {entry.get('dimensions')!r} numbers a vector; {encoder} gives {dimensions}")
    path = Path(folder) / STUDENT_FILE
    try:
        with np.load(path, allow_pickle=False) as saved:
            if sorted(saved.files) != ["coef", "intercept"]:
                raise StudentInvalid(f"{STUDENT_FILE} holds {sorted(saved.files)}, not its coefficients alone")
            coef, intercept = saved["coef"], saved["intercept"]
    except (OSError, ValueError) as exc:  # missing, not an npz, a pickled object
        raise StudentInvalid(f"{STUDENT_FILE} cannot be read: {exc}") from None
    if coef.dtype != np.dtype("<f4") or intercept.dtype != np.dtype("<f4"):
        raise StudentInvalid(f"{STUDENT_FILE} is not float32")
    if coef.shape != (len(labels), dimensions) or intercept.shape != (len(labels),):
        raise StudentInvalid(
            f"{STUDENT_FILE} has shapes {coef.shape} and {intercept.shape}, not ({len(labels)}, {dimensions})"
        )
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise StudentInvalid(f"{STUDENT_FILE} holds numbers that are not finite")
    return EmbeddingClassifier(
        list(labels),
        coef.astype(np.float64),
        intercept.astype(np.float64),
        reference=np.zeros((0, dimensions), dtype=np.float32),
    )
