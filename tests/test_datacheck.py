"""Data checks on constructed data with known answers."""

import random

import pytest

from datacheck.checks import check_data, exact_groups, label_counts

from .conftest import TOY_WORDS


def examples_with(rows):
    return [{"id": i + 1, "text": t, "label": name, "labeled_by": who} for i, (t, name, who) in enumerate(rows)]


def test_exact_duplicates_and_conflicts_name_who_labeled_what():
    rows = examples_with(
        [
            ("Where is my parcel?", "question", "U1"),
            ("where is my parcel", "question", "U2"),
            ("I want my money back", "refund", "U1"),
            ("I want my money back!", "complaint", "U3"),
            ("Something else entirely", "feedback", "U1"),
        ]
    )
    found = {f.kind: f for f in exact_groups(rows)}
    assert found["duplicate"].ids == [1, 2]
    assert found["conflict"].ids == [3, 4] and found["conflict"].labels == ["complaint", "refund"]
    assert found["conflict"].detail["labeled"] == {"3": "refund by U1", "4": "complaint by U3"}


def test_too_few_and_imbalance():
    rows = examples_with(
        [(f"q {i}", "question", "U1") for i in range(30)]
        + [("only one", "refund", "U1"), ("two", "bug", "U1"), ("three", "bug", "U1")]
    )
    kinds = {(f.kind, tuple(f.labels)) for f in label_counts(rows, 2, 10)}
    assert ("too_few", ("refund",)) in kinds and ("imbalance", ("question", "refund")) in kinds
    assert not any(k == ("too_few", ("bug",)) for k in kinds)


@pytest.fixture(scope="module")
def noisy_toy():
    """A toy set where each label has its own words, with 6 labels flipped on purpose."""
    rng = random.Random(3)
    rows = []
    for label, words in TOY_WORDS.items():
        for _ in range(25):
            rows.append((" ".join(rng.choice(words) for _ in range(6)), label, "U1"))
    examples = examples_with(rows)
    flipped = rng.sample(range(len(examples)), 6)
    for i in flipped:
        examples[i]["label"] = rng.choice([w for w in TOY_WORDS if w != examples[i]["label"]])
    return examples, {examples[i]["id"] for i in flipped}


def test_suspected_mislabels_find_the_flipped_labels(noisy_toy):
    examples, flipped = noisy_toy
    report = check_data(examples)
    flagged = {f["ids"][0] for f in report["findings"] if f["kind"] == "suspected_mislabel"}
    assert len(flagged & flipped) >= 5  # recall at least 5 of 6
    assert len(flagged - flipped) <= 2  # few clean examples accused
    first = next(f for f in report["findings"] if f["kind"] == "suspected_mislabel")
    assert first["detail"]["suggested"] != first["detail"]["given"]


def near_split():
    """Train rows with a near duplicate pair, and an eval row that leaks one of them."""
    train = examples_with(
        [
            ("My card payment was declined at the shop today", "card", "U1"),
            ("My card payment got declined at the shop today", "card", "U2"),
            ("How do I change my address?", "question", "U1"),
            ("The app crashes on start", "bug", "U1"),
        ]
    )
    return train, [{"id": 99, "text": "My card payment was declined at the shop today!", "label": "card"}]


def test_near_duplicates_and_leakage_across_the_split():
    train, evaluation = near_split()
    report = check_data(train, eval_examples=evaluation, near_threshold=0.9)
    kinds = {f["kind"]: f for f in report["findings"]}
    assert kinds["near_duplicate"]["ids"] == [1, 2]
    assert kinds["leakage"]["ids"][0] == 99
    assert report["summary"]["leakage"] >= 1


def test_tfidf_vectors_stay_sparse_and_still_find_near_duplicates_and_leakage(monkeypatch, noisy_toy):
    """Without MiniLM the check runs on sparse TF-IDF rows (a dense copy of Banking77's was gigabytes)."""
    import scipy.sparse

    from classifier import baseline
    from datacheck.checks import vectors

    monkeypatch.setattr(baseline, "minilm_path", lambda: None)
    vecs, method = vectors(["the card was declined", "the card got declined", "where is my parcel"])
    assert method == "TF-IDF character n-grams" and scipy.sparse.issparse(vecs)
    train, evaluation = near_split()
    report = check_data(train, eval_examples=evaluation, near_threshold=0.8)
    kinds = {f["kind"]: f for f in report["findings"]}
    assert kinds["near_duplicate"]["ids"] == [1, 2] and 0.8 <= kinds["near_duplicate"]["detail"]["similarity"] < 1
    assert [99, 1] in [f["ids"] for f in report["findings"] if f["kind"] == "leakage"]
    examples, flipped = noisy_toy  # the mislabel model trains on sparse rows too
    flagged = {f["ids"][0] for f in check_data(examples)["findings"] if f["kind"] == "suspected_mislabel"}
    assert len(flagged & flipped) >= 4
