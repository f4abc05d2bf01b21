"""After training: every model that could serve, scored on the same held-out split, and the gate's choice.

Three splits of the team's labelled messages, all stratified:
- train: what the adapter learns from;
- dev: held out from the adapter, used for early stopping, for the temperatures and for the
  ensemble weight (out-of-fold for the adapter; the embedding classifier sees dev only through
  its own out-of-fold fit);
- eval: touched by nothing but the scoring below, so the gate compares every candidate on rows
  none of them was tuned on.

Candidates: the new adapter (calibrated), the embedding classifier (fitted on train + dev, as the
bot will fit it on everything), their ensemble, the adapter mixed with its student (the embedding
classifier taught by the adapter on the unlabelled messages too, classifier.student; when the run
was given enough of them), and the model serving now. Each gets accuracy,
macro-F1 and expected calibration error on eval, and which eval messages it got right (the gate's
paired test); `trainer.gate.choose` picks.
"""

from __future__ import annotations

import numpy as np

from classifier.calibration import expected_calibration_error, fit_temperature, log_softmax, selective_accuracy
from classifier.encoders import DEFAULT_ENCODER
from classifier.encoders import encoder as encoder_named
from classifier.ensemble import adapter_temperature
from classifier.evaluate import classification_metrics
from classifier.kinds import ADAPTER, DISTILLED, EMBEDDINGS, ENSEMBLE, kind
from classifier.student import MIN_POOL

from .gate import SIGNIFICANCE, Candidate, choose


def probability_matrix(predictions: list, names: list[str]) -> np.ndarray:
    """Predictions' per-label probabilities as log-scores, (n, labels) in `names` order."""
    return np.log(np.array([[max(p.scores.get(n, 0.0), 1e-30) for n in names] for p in predictions]))


def score(
    name: str,
    kind: str,
    logp: np.ndarray,
    gold: np.ndarray,
    names: list[str],
    *,
    serving: bool = False,
    details: dict | None = None,
) -> Candidate:
    probs = np.exp(logp)
    predicted = [names[i] for i in probs.argmax(axis=1)]
    metrics = classification_metrics([names[i] for i in gold], predicted, names)
    metrics["ece"] = expected_calibration_error(probs, gold)
    metrics["selective"] = selective_accuracy(probs, gold)
    return Candidate(
        name,
        kind,
        metrics,
        serving=serving,
        details=details or {},
        correct=tuple(bool(x) for x in probs.argmax(axis=1) == gold),
    )


def embed_examples(examples: list[dict], encoder: str = DEFAULT_ENCODER) -> np.ndarray:
    from classifier.embeddings import embed, message_text

    return embed([message_text(e["text"], e.get("subject")) for e in examples], encoder)


def evaluate_candidates(
    names: list[str],
    train: list[dict],
    dev: list[dict],
    evaluation: list[dict],
    adapter_dev: np.ndarray | None,
    adapter_eval: np.ndarray,
    *,
    margin: float,
    serving: dict | None = None,
    serving_eval: np.ndarray | None = None,
    same_data: bool = False,
    significance: float = SIGNIFICANCE,
    embeddings: bool = True,
    encoder: str = DEFAULT_ENCODER,
    vectors: np.ndarray | None = None,
    pool: np.ndarray | None = None,
    pseudo: list[str] | None = None,
    serving_student=None,
) -> dict:
    """Score the candidates on `evaluation` and choose. Arrays are the adapter's log-scores, (n, labels).

    `serving` describes the model answering now ({kind, name, details}); `serving_eval` is its
    adapter's log-scores on eval when it has one. Returns {candidates, picked, reason, details}.
    `same_data`: the embedding candidate fits on train alone, as the adapter trained (both are then
    refitted on everything to serve); else on train and dev, as the adapter also used dev (to stop).
    `embeddings`: False (no baseline configured, or the embedder is not installed) leaves out the
    embedding classifier and the ensemble; the same rule then chooses among the adapters.
    `vectors`: the embeddings of train + dev + evaluation in that order, when already computed.
    `pool`, `pseudo`: the unlabelled messages' vectors and the new adapter's labels for them; with at
    least classifier.student.MIN_POOL rows, the distilled candidate takes part. `serving_student`: the
    serving adapter's student, when what serves is distilled.
    """
    from classifier.embeddings import EmbeddingClassifier
    from classifier.ensemble import Mix, fit_mix

    index = {n: i for i, n in enumerate(names)}
    gold_eval = np.array([index[e["label"]] for e in evaluation])
    gold_dev = np.array([index[e["label"]] for e in dev])
    serving_kind = (serving or {}).get("kind")
    candidates = []
    adapter_t = fit_temperature(adapter_dev, gold_dev) if adapter_dev is not None and len(dev) else 1.0
    candidates.append(
        score(
            "new adapter",
            ADAPTER.name,
            log_softmax(adapter_eval / adapter_t),
            gold_eval,
            names,
            details={"temperature": adapter_t},
        )
    )
    fitted = None
    if embeddings:
        if vectors is None:
            vectors = embed_examples(train + dev + evaluation, encoder)
        x_train, x_dev = vectors[: len(train)], vectors[len(train) : len(train) + len(dev)]
        x_eval = vectors[len(train) + len(dev) :]
        y_train, y_dev = [e["label"] for e in train], [e["label"] for e in dev]
        fitted = (
            EmbeddingClassifier.fit(x_train, y_train, names)
            if same_data
            else EmbeddingClassifier.fit(np.concatenate([x_train, x_dev]), y_train + y_dev, names)
        )
        candidates.append(
            score(
                EMBEDDINGS.served_name(),
                EMBEDDINGS.name,
                fitted.log_probs(x_eval),
                gold_eval,
                names,
                serving=serving_kind == EMBEDDINGS.name,
                details={"temperature": fitted.temperature, "encoder": encoder_named(encoder).name},
            )
        )
        if adapter_dev is not None and len(dev):
            # The ensemble weight: adapter held-out on dev, embeddings fitted on train alone, never eval.
            on_train = EmbeddingClassifier.fit(x_train, y_train, names)
            mix = fit_mix(adapter_dev, on_train.logits(x_dev), gold_dev, embedding_temperature=on_train.temperature)
            candidates.append(
                score(
                    "new adapter + embeddings",
                    ENSEMBLE.name,
                    mix.log_probs(adapter_eval, fitted.logits(x_eval)),
                    gold_eval,
                    names,
                    details={"mix": mix.to_dict(), "encoder": encoder_named(encoder).name},
                )
            )
            if pool is not None and len(pool) >= MIN_POOL:
                # The adapter mixed with its student (classifier.student): the weight fitted on dev by a student
                # that never saw dev; the student scored on eval learnt from the rows the embedding candidate did.
                from classifier.student import teach

                on_train = teach(x_train, y_train, pool, pseudo, names)
                distilled_mix = fit_mix(adapter_dev, on_train.logits(x_dev), gold_dev)
                student = (
                    on_train
                    if same_data
                    else teach(np.concatenate([x_train, x_dev]), y_train + y_dev, pool, pseudo, names)
                )
                candidates.append(
                    score(
                        "new adapter + distilled embeddings",
                        DISTILLED.name,
                        distilled_mix.log_probs(adapter_eval, student.logits(x_eval)),
                        gold_eval,
                        names,
                        details={
                            "mix": distilled_mix.to_dict(),
                            "encoder": encoder_named(encoder).name,
                            "pool_rows": len(pool),
                        },
                    )
                )
    serving_adapter = serving_kind is not None and kind(serving_kind).needs_adapter
    if serving_adapter and serving_eval is not None:
        details = serving.get("details") or {}
        if serving_kind == DISTILLED.name and details.get("mix") and serving_student is not None and fitted is not None:
            student_logits = in_columns(serving_student.labels, serving_student.logits(x_eval), names)
            logp = Mix.from_dict(details["mix"]).log_probs(serving_eval, student_logits)
        elif serving_kind == ENSEMBLE.name and details.get("mix") and fitted is not None:
            logp = Mix.from_dict(details["mix"]).log_probs(serving_eval, fitted.logits(x_eval))
        else:  # an adapter alone, or a mix that cannot run here: calibrated as the bot serves it (bot.serving)
            logp = log_softmax(serving_eval / adapter_temperature(details))
        candidates.append(
            score(
                serving.get("name") or "serving adapter",
                serving_kind,
                logp,
                gold_eval,
                names,
                serving=True,
                details=details,
            )
        )
    if serving_adapter and serving_eval is None and (serving or {}).get("not_comparable"):
        reason_suffix = f" ({serving.get('name') or 'the serving adapter'} was not scored: {serving['not_comparable']})"
    else:
        reason_suffix = ""
    decision = choose(candidates, margin, significance, serving_kind=serving_kind)
    picked, reason = decision.picked, decision.reason + reason_suffix
    return {
        "candidates": [_summary(c) for c in candidates],
        "picked": picked.name,
        "kind": picked.kind,
        "new": not picked.serving and kind(picked.kind).needs_adapter,
        "reason": reason,
        "p_value": decision.p_value,
        "significance": significance,
        "details": picked.details,
        "ece": picked.metrics["ece"],
        "selective": picked.metrics["selective"],
    }


def in_columns(labels: list[str], logits: np.ndarray, names: list[str]) -> np.ndarray:
    """`logits` (columns in `labels` order) in `names` order; a name `labels` lacks gets a column that never wins
    (a label added since that model was fitted)."""
    from classifier.embeddings import UNSEEN

    out = np.full((len(logits), len(names)), UNSEEN, dtype=np.float64)
    for i, name in enumerate(names):
        if name in labels:
            out[:, i] = logits[:, labels.index(name)]
    return out


def _summary(candidate: Candidate) -> dict:
    m = candidate.metrics
    return {
        "name": candidate.name,
        "kind": candidate.kind,
        "serving": candidate.serving,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ece": m["ece"],
        "n": m["n"],
        "right": candidate.right,
        "details": candidate.details,
    }
