"""Data checks that catch what costs a training run: duplicates, conflicts, thin labels, leakage, mislabels.

Examples in ({"id", "text", "label", optional "labeled_by"}), findings out.
Suspected mislabels use confident learning: out-of-fold probabilities from a
cheap model (sentence embeddings + logistic regression in k folds); a class's
threshold is the mean probability its own examples get; the confident joint
estimates how many labels are wrong, and that many examples, ranked by how
unlikely the model finds their given label (self-confidence), are flagged.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

SEARCH_MEMORY_MB = 64  # the near-duplicate search works in chunks of this many MB of distances
KINDS = (
    "conflict",
    "duplicate",
    "near_conflict",
    "near_duplicate",
    "too_few",
    "imbalance",
    "leakage",
    "suspected_mislabel",
)


@dataclass
class Finding:
    kind: str
    message: str
    ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def exact_groups(examples: list[dict]) -> list[Finding]:
    groups = defaultdict(list)
    for e in examples:
        groups[normalize(e["text"])].append(e)
    findings = []
    for members in groups.values():
        if len(members) < 2:
            continue
        labels = sorted({m["label"] for m in members})
        who = {str(m["id"]): f"{m['label']} by {m.get('labeled_by', '?')}" for m in members}
        kind = "conflict" if len(labels) > 1 else "duplicate"
        text = members[0]["text"][:80]
        message = (
            f'{len(members)} copies of "{text}" carry different labels: {", ".join(labels)}'
            if kind == "conflict"
            else f'{len(members)} copies of "{text}" ({labels[0]})'
        )
        findings.append(Finding(kind, message, [m["id"] for m in members], labels, {"labeled": who}))
    return findings


def vectors(texts: list[str]):
    """Normalized sentence embeddings (MiniLM) when installed, else TF-IDF character n-grams (kept sparse)."""
    import numpy as np

    from classifier.baseline import embed, minilm_path

    path = minilm_path()
    if path:
        return np.asarray(embed(texts, path)), "MiniLM embeddings"
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize as l2

    matrix = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).fit_transform(texts)
    return l2(matrix), "TF-IDF character n-grams"


def similar_pairs(query, indexed, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) for rows i of `query` and j of `indexed` at least `threshold` alike.

    A radius search (scikit-learn, brute force in chunks), so neither a dense TF-IDF matrix nor an
    n x n similarity matrix is ever built; sparse input stays sparse. `query` None: `indexed`
    against itself, each pair once (i < j).
    """
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    radius = 1.0 - threshold + 1e-9  # cosine distance; the epsilon keeps pairs exactly at the threshold
    search = NearestNeighbors(radius=radius, metric="cosine", algorithm="brute").fit(indexed)
    with config_context(working_memory=SEARCH_MEMORY_MB):  # the size of each chunk of distances
        distances, neighbours = search.radius_neighbors(query, return_distance=True)
    return [
        (i, int(j), 1.0 - float(d))
        for i, (row_d, row_j) in enumerate(zip(distances, neighbours))
        for d, j in zip(row_d, row_j)
        if query is not None or i < j
    ]


def near_pairs(examples: list[dict], vecs, threshold: float) -> list[Finding]:
    findings = []
    for i, j, similarity in similar_pairs(None, vecs, threshold):
        a, b = examples[i], examples[j]
        if normalize(a["text"]) == normalize(b["text"]):
            continue  # reported as an exact duplicate
        kind = "near_conflict" if a["label"] != b["label"] else "near_duplicate"
        findings.append(
            Finding(
                kind,
                f'"{a["text"][:60]}" ({a["label"]}) and "{b["text"][:60]}" ({b["label"]}) are {similarity:.0%} alike',
                [a["id"], b["id"]],
                sorted({a["label"], b["label"]}),
                {"similarity": similarity},
            )
        )
    return findings


def label_counts(examples: list[dict], min_per_label: int, imbalance_ratio: float) -> list[Finding]:
    counts = Counter(e["label"] for e in examples)
    findings = [
        Finding(
            "too_few",
            f"`{label}` has {n} example(s); at least {min_per_label} are needed to split into train and eval",
            labels=[label],
            detail={"count": n},
        )
        for label, n in sorted(counts.items())
        if n < min_per_label
    ]
    if counts and max(counts.values()) / max(1, min(counts.values())) > imbalance_ratio:
        big, small = counts.most_common()[0], counts.most_common()[-1]
        findings.append(
            Finding(
                "imbalance",
                f"`{big[0]}` has {big[1]} examples, `{small[0]}` only {small[1]} ({big[1] / small[1]:.0f}x)",
                labels=[big[0], small[0]],
                detail=dict(counts),
            )
        )
    return findings


def leakage(train: list[dict], evaluation: list[dict], vecs_train, vecs_eval, threshold: float) -> list[Finding]:
    findings = []
    for i, j, similarity in similar_pairs(vecs_eval, vecs_train, threshold):
        e, t = evaluation[i], train[j]
        findings.append(
            Finding(
                "leakage",
                f'eval "{e["text"][:60]}" is {similarity:.0%} like train "{t["text"][:60]}"',
                [e["id"], t["id"]],
                sorted({e["label"], t["label"]}),
                {"similarity": similarity},
            )
        )
    return findings


def out_of_fold_probabilities(vecs, labels: list[str], folds: int, seed: int):
    """Each example's label probabilities from the embedding classifier fitted without it."""
    from classifier.calibration import softmax
    from classifier.embeddings import out_of_fold_logits

    classes = sorted(set(labels))
    logits, y = out_of_fold_logits(vecs, labels, classes, folds, seed)
    return softmax(logits), classes, y


def suspected_mislabels(examples: list[dict], vecs, *, folds: int = 5, seed: int = 42) -> list[Finding]:
    """Confident learning: flag as many examples as the confident joint says are wrong, most confident first."""
    import numpy as np

    labels = [e["label"] for e in examples]
    if len(set(labels)) < 2 or min(Counter(labels).values()) < 2:
        return []
    probs, classes, y = out_of_fold_probabilities(vecs, labels, folds, seed)
    thresholds = np.array([probs[y == k, k].mean() for k in range(len(classes))])
    above = probs >= thresholds
    off_diagonal = 0
    for i in range(len(examples)):
        candidates = np.where(above[i])[0]
        if len(candidates):
            off_diagonal += int(candidates[np.argmax(probs[i, candidates])] != y[i])
    given = probs[np.arange(len(y)), y]
    margin = probs.max(axis=1) - given
    # Rank by self-confidence (the given label's probability, lowest first): on Banking77 with 10% flipped
    # labels it beat ranking by margin at the same cut-off (bench/README.md, "mislabels").
    ranked = [i for i in np.argsort(given) if margin[i] > 0][:off_diagonal]
    findings = []
    for i in ranked:
        suggested = classes[int(np.argmax(probs[i]))]
        e = examples[i]
        findings.append(
            Finding(
                "suspected_mislabel",
                f'"{e["text"][:80]}" is labeled `{e["label"]}`; the check '
                f"says `{suggested}` ({probs[i].max():.0%} vs {probs[i, y[i]]:.0%})",
                [e["id"]],
                [e["label"], suggested],
                {
                    "given": e["label"],
                    "suggested": suggested,
                    "margin": float(margin[i]),
                    "labeled_by": e.get("labeled_by"),
                },
            )
        )
    return findings


def check_data(
    examples: list[dict],
    *,
    eval_examples: list[dict] | None = None,
    min_per_label: int = 2,
    imbalance_ratio: float = 10.0,
    near_threshold: float = 0.95,
    folds: int = 5,
    seed: int = 42,
) -> dict:
    """Every check over `examples` (and leakage against `eval_examples` when given)."""
    findings = exact_groups(examples) + label_counts(examples, min_per_label, imbalance_ratio)
    method = None
    if len(examples) >= 2:
        all_examples = examples + (eval_examples or [])
        vecs, method = vectors([e["text"] for e in all_examples])
        own = vecs[: len(examples)]
        findings += near_pairs(examples, own, near_threshold)
        if eval_examples:
            findings += leakage(examples, eval_examples, own, vecs[len(examples) :], near_threshold)
        findings += suspected_mislabels(examples, own, folds=folds, seed=seed)
    summary = Counter(f.kind for f in findings)
    return {
        "examples": len(examples),
        "method": method,
        "summary": {k: summary.get(k, 0) for k in KINDS},
        "findings": [f.to_dict() for f in findings],
    }
