"""The unlabelled mail: the adapter labels it, a student learns from it, the gate measures the mix, the bot serves it."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from classifier.student import MIN_POOL, STUDENT_FILE, StudentInvalid, describe, load_student, save_student, teach
from datacheck.examples import DataError
from storage import adapters, labels, messages, served
from storage import embeddings as stored
from trainer.data import POOL_TEXTS, POOL_VECTORS, read_unlabelled

from .conftest import TOY_WORDS, make_run_dir, toy_config, toy_examples
from .test_serving import add_labelled, fake_embed, workspace  # noqa: F401 - the fixture

NAMES = list(TOY_WORDS)


def write_pool(run_dir, texts, vectors=None):
    (run_dir / POOL_TEXTS).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    np.save(run_dir / POOL_VECTORS, fake_embed(texts) if vectors is None else vectors)


def pool_texts(n):
    return [e["text"] for e in toy_examples(per_label=n // len(NAMES) + 1)][:n]


# -- the run --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled_run(tiny_model_dir, tmp_path_factory):
    from trainer import candidates
    from trainer.run import run

    patch = pytest.MonkeyPatch()
    patch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    config = toy_config(tiny_model_dir, baseline=True, epochs=2, embedding_model="minilm", unlabelled_max=130)
    run_dir = make_run_dir(tmp_path_factory.mktemp("distilled") / "run", config, toy_examples(per_label=10))
    write_pool(run_dir, pool_texts(150))
    try:
        yield run_dir, run(run_dir)
    finally:
        patch.undo()


def test_a_run_given_unlabelled_mail_scores_the_adapter_mixed_with_its_student(distilled_run):
    run_dir, result = distilled_run
    assert result["status"] == "succeeded", result.get("error")
    assert result["distillation"]["pool_rows"] == 130  # the newest 130 of 150: the cap
    assert result["distillation"]["label_seconds"] > 0
    kinds = {c["kind"]: c for c in result["gate"]["candidates"]}
    assert set(kinds) == {"adapter", "embeddings", "ensemble", "distilled"}
    distilled = kinds["distilled"]
    assert distilled["name"] == "new adapter + distilled embeddings" and distilled["n"] == result["data"]["eval"]
    assert distilled["details"]["pool_rows"] == 130 and distilled["details"]["encoder"] == "all-MiniLM-L6-v2"
    assert 0 <= distilled["details"]["mix"]["weight"] <= 1


def test_the_student_is_saved_in_the_adapter_folder_and_reads_back_checked(distilled_run):
    run_dir, result = distilled_run
    folder = run_dir / "adapter"
    meta = json.loads((folder / "supportbot.json").read_text())
    entry = meta["student"]
    assert entry["labels"] == NAMES and entry["pool_rows"] == 130 and entry["dimensions"] == 384
    n_labelled = result["data"]["train"] + result["data"]["dev"] + result["data"]["eval"]
    assert entry["labelled_rows"] == n_labelled  # taught on every labelled message, as the bot's classifier is
    student = load_student(folder, meta, encoder="all-MiniLM-L6-v2", dimensions=384)
    assert student.coef.shape == (3, 384)
    x = fake_embed(["broken refund angry", "how when which"])
    assert student.logits(x).shape == (2, 3) and np.isfinite(student.logits(x)).all()


def test_fewer_unlabelled_messages_than_the_minimum_add_no_candidate(tiny_model_dir, tmp_path, monkeypatch):
    from trainer import candidates
    from trainer.run import run

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    config = toy_config(
        tiny_model_dir, baseline=True, epochs=1, embedding_model="minilm", max_steps=2, unlabelled_max=3000
    )
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples(per_label=10))
    write_pool(run_dir, pool_texts(MIN_POOL - 1))
    result = run(run_dir)
    assert result["status"] == "succeeded", result.get("error")
    assert "distilled" not in {c["kind"] for c in result["gate"]["candidates"]}
    assert result["distillation"] == {"pool_rows": MIN_POOL - 1, "skipped": f"fewer than {MIN_POOL} messages"}
    assert "student" not in json.loads((run_dir / "adapter" / "supportbot.json").read_text())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / POOL_VECTORS).unlink(), "unlabelled.npy is missing"),
        (lambda d: np.save(d / POOL_VECTORS, fake_embed(["a"] * 3)), "expected float32 of shape (150, 384)"),
        (lambda d: np.save(d / POOL_VECTORS, fake_embed(["a"] * 150).astype(np.float64)), "got float64"),
        (lambda d: np.save(d / POOL_VECTORS, np.full((150, 384), np.nan, dtype=np.float32)), "not finite"),
        (lambda d: np.save(d / POOL_VECTORS, np.array([{"x": 1}] * 150), allow_pickle=True), "not a saved array"),
        (lambda d: (d / POOL_TEXTS).write_text('{"text": 3}\n'), "line 1: expected an object with a text string"),
        (lambda d: (d / POOL_VECTORS).write_bytes(b""), "not a saved array"),
        (lambda d: (d / POOL_VECTORS).write_bytes((d / POOL_VECTORS).read_bytes()[:200]), "not a saved array"),
    ],
)
def test_a_damaged_pool_is_refused_before_any_model_loads(tmp_path, damage, message):
    from trainer.run import run

    run_dir = make_run_dir(
        tmp_path / "run", toy_config("/no/such/model", embedding_model="minilm", baseline=True, unlabelled_max=3000), []
    )
    (run_dir / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in toy_examples(per_label=10)))
    write_pool(run_dir, pool_texts(150))
    damage(run_dir)
    result = run(run_dir)  # the base model does not exist: only a check before loading it can answer
    assert result["status"] == "failed" and result.get("bad_input") and message in result["error"]
    assert not (run_dir / "adapter").exists()


def test_the_pool_is_read_only_when_asked_for(tmp_path):
    write_pool(tmp_path, pool_texts(20))
    rows, vectors = read_unlabelled(tmp_path, 384, 0)
    assert rows == [] and vectors.shape == (0, 384)
    rows, vectors = read_unlabelled(tmp_path, 384, 5)
    assert [r["text"] for r in rows] == pool_texts(20)[:5] and vectors.shape == (5, 384)
    with pytest.raises(DataError, match="expected float32 of shape"):
        read_unlabelled(tmp_path, 768, 5)  # another encoder's vectors


# -- the gate -------------------------------------------------------------------------------------------------


def test_the_students_mix_never_looks_at_eval_and_its_dev_student_never_saw_dev(monkeypatch):
    from classifier import student as student_module
    from trainer import candidates

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    taught = []
    real = student_module.teach

    def recording(labelled, gold, pool, pseudo, names):
        taught.append(len(gold))
        return real(labelled, gold, pool, pseudo, names)

    monkeypatch.setattr(student_module, "teach", recording)
    rows = toy_examples(per_label=12)
    train, dev, evaluation = rows[0::3], rows[1::3], rows[2::3]
    rng = np.random.default_rng(0)
    adapter_dev, adapter_eval = rng.normal(0, 1, (len(dev), 3)), rng.normal(0, 1, (len(evaluation), 3))
    texts = pool_texts(MIN_POOL)
    pool, pseudo = fake_embed(texts), [NAMES[i % 3] for i in range(MIN_POOL)]
    flipped = [{**e, "label": NAMES[(NAMES.index(e["label"]) + 1) % 3]} for e in evaluation]
    mixes = []
    for ev, scores in ((evaluation, adapter_eval), (flipped, adapter_eval * 5)):
        taught.clear()
        gate = candidates.evaluate_candidates(
            NAMES, train, dev, ev, adapter_dev, scores, margin=0.01, same_data=False, pool=pool, pseudo=pseudo
        )
        mixes.append(next(c for c in gate["candidates"] if c["kind"] == "distilled")["details"]["mix"])
        assert taught == [len(train), len(train) + len(dev)]  # the mix's student saw no dev; eval's saw no eval
    assert mixes[0] == mixes[1]


def test_a_distilled_model_serving_now_is_scored_with_its_own_student(monkeypatch):
    from classifier.ensemble import Mix
    from trainer import candidates

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    rows = toy_examples(per_label=6)
    train, dev, evaluation = rows[0::3], rows[1::3], rows[2::3]
    x_eval = fake_embed([e["text"] for e in evaluation])
    wrong = [NAMES[(NAMES.index(e["label"]) + 1) % 3] for e in evaluation]  # a student that is always wrong
    student = teach(x_eval, wrong, x_eval[:0], [], NAMES)
    mix = Mix(0.0, 1.0, 1.0, 1.0)  # all the weight on the student
    serving = {"kind": "distilled", "name": "adapter v1 + distilled embeddings", "details": {"mix": mix.to_dict()}}
    zeros = np.zeros((len(evaluation), 3))
    gate = candidates.evaluate_candidates(
        NAMES, train, dev, evaluation, np.zeros((len(dev), 3)), zeros, margin=0.01, serving=serving,
        serving_eval=zeros, serving_student=student,
    )  # fmt: skip
    scored = next(c for c in gate["candidates"] if c["serving"])
    assert scored["kind"] == "distilled" and scored["accuracy"] == 0.0  # its student's answers, not the adapter's


# -- the saved student ----------------------------------------------------------------------------------------


@pytest.fixture
def saved_student(tmp_path):
    x = fake_embed([e["text"] for e in toy_examples(per_label=4)])
    student = teach(x, [e["label"] for e in toy_examples(per_label=4)], x[:0], [], NAMES)
    save_student(student, tmp_path)
    meta = {"head": {"labels": NAMES}, "prompt": {"labels": [{"name": n} for n in NAMES]}}
    meta["student"] = describe(student, "all-MiniLM-L6-v2", 0, len(x))
    return tmp_path, meta


def _rewrite(folder, **arrays):
    with np.load(folder / STUDENT_FILE) as saved:
        data = {k: saved[k] for k in saved.files}
    data.update(arrays)
    np.savez(folder / STUDENT_FILE, **{k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f, m: m["student"].update(labels=["question", "complaint", "feedback"]), "not the adapter's"),
        (lambda f, m: m["student"].update(encoder="all-mpnet-base-v2"), "fitted on 'all-mpnet-base-v2' vectors"),
        (lambda f, m: m["student"].update(dimensions=768), "reads 768 numbers a vector"),
        (lambda f, m: m.pop("student"), "the adapter has no student"),
        (lambda f, m: (f / STUDENT_FILE).unlink(), "cannot be read"),
        (lambda f, m: (f / STUDENT_FILE).write_bytes(b"not a zip"), "cannot be read"),
        (lambda f, m: _rewrite(f, extra=np.zeros(2)), "not its coefficients alone"),
        (lambda f, m: _rewrite(f, coef=np.zeros((3, 10), dtype="<f4")), "has shapes (3, 10)"),
        (lambda f, m: _rewrite(f, intercept=np.array([1.0, np.inf, 0.0], dtype="<f4")), "not finite"),
        (lambda f, m: _rewrite(f, coef=np.zeros((3, 384))), "not float32"),
        (lambda f, m: _rewrite(f, coef=np.array([object()] * 3)), "cannot be read"),
        (lambda f, m: (f / STUDENT_FILE).write_bytes(b""), "cannot be read"),
        (lambda f, m: (f / STUDENT_FILE).write_bytes((f / STUDENT_FILE).read_bytes()[:300]), "cannot be read"),
        (lambda f, m: np.save(open(f / STUDENT_FILE, "wb"), np.zeros(3)), "cannot be read"),  # an .npy in its place
        (lambda f, m: m.update(prompt={"labels": ["complaint"]}, head=None), "cannot be read"),
    ],
)
def test_a_saved_student_is_checked_before_it_is_trusted(saved_student, damage, message):
    folder, meta = saved_student
    assert load_student(folder, meta, encoder="all-MiniLM-L6-v2", dimensions=384).coef.shape == (3, 384)
    damage(folder, meta)
    with pytest.raises(StudentInvalid, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_student(folder, meta, encoder="all-MiniLM-L6-v2", dimensions=384)


# -- the bot --------------------------------------------------------------------------------------------------


def test_the_bot_hands_a_run_the_newest_unlabelled_messages_with_their_vectors(env):
    from bot.runs.execute import prepare_run
    from bot.settings import load_settings
    from storage import open_db, runs

    settings = load_settings({"SUPPORTBOT_DATA_DIR": str(env / "data")}, env_file=None)
    db = open_db(settings.db_path)
    for name in NAMES:
        labels.add_label_def(db, name, f"{name} messages")
    model, dims = "all-mpnet-base-v2", 768
    ids = {}
    for i, text in enumerate(["labelled", "excluded", "deleted", "other encoder", "old", "new", "newest"]):
        m, _ = messages.add_message(db, source="email", external_id=f"e{i}", raw_body=text, clean_body=text)
        ids[text] = m.id
        vector = np.full(dims if text != "other encoder" else 384, i, dtype="<f4").tobytes()
        stored.add_embedding(db, m.id, model if text != "other encoder" else "all-MiniLM-L6-v2", vector)
    labels.add_label(db, ids["labelled"], "complaint", by="U1", method="cli")
    labels.add_label(db, ids["excluded"], "complaint", by="U1", method="cli", excluded=True)
    messages.mark_deleted(db, ids["deleted"])
    assert [r["id"] for r in stored.unlabelled_vectors(db, model, 2)] == [ids["newest"], ids["new"]]
    run_dir = prepare_run(settings, db, runs.queue_run(db, requested_by="U1", params={"unlabelled_max": 3}))
    lines = [json.loads(x) for x in (run_dir / POOL_TEXTS).read_text().splitlines()]
    assert [x["text"] for x in lines] == ["newest", "new", "old"]  # nothing labelled, excluded or deleted
    vectors = np.load(run_dir / POOL_VECTORS)
    assert vectors.shape == (3, dims) and vectors[:, 0].tolist() == [6, 5, 4]
    assert os.stat(run_dir / POOL_VECTORS).st_mode & 0o077 == 0  # customer text's vectors: the owner's only
    rows, read = read_unlabelled(run_dir, dims, 4000)  # what the trainer reads back
    assert len(rows) == 3 and np.array_equal(read, vectors)


def minilm_classifier(settings):
    """The serving classifier embedding with MiniLM: fake_embed's vectors have MiniLM's 384 numbers."""
    from bot.serving import ServedClassifier
    from classifier.encoders import encoder

    classifier = ServedClassifier(settings)
    classifier.encoder = encoder("minilm")
    return classifier


MIX = {"weight": 0.5, "adapter_temperature": 2.0, "embedding_temperature": 1.0, "temperature": 1.0}


def serve_distilled(db, path: str, names: list[str], encoder: str = "all-MiniLM-L6-v2"):
    """A promoted adapter at `path` that the gate chose as distilled, with its mix fitted on `encoder`."""
    a = adapters.register_adapter(db, path=path, base_model="m", labels=names, metrics={})
    adapters.promote(db, a.version)
    served.set_served(
        db, "distilled", adapter_version=a.version, reason="gate", chosen_by="gate",
        details={"mix": MIX, "encoder": encoder},
    )  # fmt: skip
    return a, MIX


def _student_adapter(tmp_path, labels_):
    x = fake_embed(["broken refund angry", "angry late broken", "how when which", "what which how"])
    student = teach(x, ["complaint", "complaint", "question", "question"], x[:0], [], labels_)
    save_student(student, tmp_path)
    meta = {"head": {"labels": labels_}, "prompt": {"labels": [{"name": n} for n in labels_]}}
    meta["student"] = describe(student, "all-MiniLM-L6-v2", 0, 4)
    (tmp_path / "supportbot.json").write_text(json.dumps(meta))
    return student


def test_a_distilled_adapter_answers_with_its_student_in_the_mix(workspace, tmp_path, monkeypatch):  # noqa: F811
    from classifier.calibration import log_softmax
    from classifier.ensemble import Mix

    settings, db, _ = workspace
    for text, label in (("broken refund", "complaint"), ("angry late", "complaint"), ("how when", "question")):
        add_labelled(db, text, label)
    add_labelled(db, "what which", "question")
    add_labelled(db, "thanks great", "feedback")
    add_labelled(db, "love it great", "feedback")
    names = ["complaint", "feedback", "question"]
    student = _student_adapter(tmp_path, names)
    a = adapters.register_adapter(db, path=str(tmp_path), base_model="m", labels=names, metrics={})
    adapters.promote(db, a.version)
    mix = Mix(0.5, 2.0, 1.0, 1.0)
    details = {"mix": mix.to_dict(), "encoder": "all-MiniLM-L6-v2", "pool_rows": 150}
    served.set_served(db, "distilled", adapter_version=a.version, reason="gate", chosen_by="gate", details=details)
    classifier = minilm_classifier(settings)
    classifier.refit(db)
    wanted = classifier._wanted(db)
    assert wanted.kind == "distilled" and wanted.student is None  # read only once the folder passed its checks
    state = classifier._with_student(wanted)  # what _load_adapter does after them
    assert state.kind == "distilled" and state.name == "adapter v1 + distilled embeddings"
    assert state.student is not None and state.embeddings is not None  # the novelty check stays the live one's
    assert classifier._wanted(db).student is state.student  # read once per process

    adapter_scores = {"complaint": 0.2, "feedback": 0.2, "question": 0.6}

    class Adapter:
        labels = names

        def classify_many(self, items):
            return [SimpleNamespace(scores=adapter_scores, adapter_version=a.version, certified=True) for _ in items]

        def classify(self, text, subject=None):
            return self.classify_many([(text, subject)])[0]

    monkeypatch.setattr(classifier, "_model_for", lambda state: Adapter())
    classifier._state = state
    answer = classifier.classify("broken refund angry")
    expected = mix.log_probs(
        np.log([[adapter_scores[n] for n in names]]), student.logits(fake_embed(["broken refund angry"]))
    )
    assert answer.model == "adapter v1 + distilled embeddings"
    assert answer.label == names[int(expected.argmax())] == "complaint"  # the student outvotes the adapter
    assert answer.confidence == pytest.approx(float(np.exp(expected.max())), rel=1e-6)
    assert not np.allclose(expected, log_softmax(np.log([[0.2, 0.2, 0.6]]) / 2.0))
    classifier.close()


def test_a_student_that_fails_its_check_leaves_the_adapter_alone_serving_and_says_why(workspace, tmp_path):  # noqa: F811
    settings, db, _ = workspace
    for text, label in (("broken refund", "complaint"), ("angry late", "complaint")):
        add_labelled(db, text, label)
    add_labelled(db, "how when", "question")
    add_labelled(db, "what which", "question")
    names = ["complaint", "feedback", "question"]
    _student_adapter(tmp_path, names)
    np.savez(tmp_path / STUDENT_FILE, coef=np.zeros((3, 5), dtype="<f4"), intercept=np.zeros(3, dtype="<f4"))
    a, mix = serve_distilled(db, str(tmp_path), names)
    classifier = minilm_classifier(settings)
    classifier.refit(db)
    state = classifier._with_student(classifier._wanted(db))
    assert state.kind == "adapter" and state.name == "adapter v1" and state.student is None
    assert state.note.startswith("its student cannot be used: student.npz has shapes (3, 5)")
    assert classifier._wanted(db) == state  # remembered: the next sync serves the adapter alone at once
    served.set_served(
        db, "distilled", adapter_version=a.version, reason="gate", chosen_by="gate",
        details={"mix": mix, "encoder": "all-mpnet-base-v2"},
    )  # fmt: skip
    assert classifier._wanted(db).note == (
        "its mix was fitted with all-mpnet-base-v2, and the bot now embeds with all-MiniLM-L6-v2"
    )
    classifier.close()


def test_the_served_model_table_takes_a_distilled_choice_and_an_upgrade_keeps_every_row(tmp_path):
    from sqlite_utils import Database

    from storage import open_db
    from storage.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    old = type(MIGRATIONS)("supportbot")
    old._migrations = [m for m in MIGRATIONS._migrations if m.name < "m009"]
    legacy = Database(path)
    old.apply(legacy)
    legacy.execute(
        "INSERT INTO adapters (version, path, base_model, labels, created_at) VALUES (1, '/a', 'm', '[]', 'then')"
    )
    legacy.execute(
        "INSERT INTO served_models (kind, adapter_version, reason, chosen_by, created_at) "
        "VALUES ('ensemble', 1, 'kept', 'gate', 'then')"
    )
    legacy.conn.commit()
    legacy.conn.close()
    db = open_db(path)
    assert served.current_served(db).kind == "ensemble" and served.current_served(db).reason == "kept"
    choice = served.set_served(db, "distilled", adapter_version=1, reason="gate", chosen_by="gate")
    assert served.current_served(db) == choice and choice.kind == "distilled"
    with pytest.raises(ValueError):
        served.set_served(db, "distilled", reason="no adapter", chosen_by="gate")


def test_a_distilled_choice_is_named_from_the_registry():
    from bot.serving import served_name

    assert served_name("distilled", 4) == "adapter v4 + distilled embeddings"


def test_a_distilled_model_serving_now_is_scored_in_this_runs_label_columns(monkeypatch):
    """A label added since the serving adapter trained: its student's columns are matched by name, not place."""
    from classifier.ensemble import Mix
    from trainer import candidates

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    rows = toy_examples(per_label=6)
    train, dev, evaluation = rows[0::3], rows[1::3], rows[2::3]
    names = NAMES + ["refund"]  # this run's labels: one more than the serving student knows
    x_eval = fake_embed([e["text"] for e in evaluation])
    student = teach(x_eval, [e["label"] for e in evaluation], x_eval[:0], [], list(reversed(NAMES)))
    serving = {"kind": "distilled", "name": "adapter v1", "details": {"mix": Mix(0.0, 1.0, 1.0, 1.0).to_dict()}}
    zeros = np.zeros((len(evaluation), len(names)))
    gate = candidates.evaluate_candidates(
        names, train, dev, evaluation, np.zeros((len(dev), len(names))), zeros, margin=0.01, serving=serving,
        serving_eval=zeros, serving_student=student,
    )  # fmt: skip
    scored = next(c for c in gate["candidates"] if c["serving"])
    assert scored["accuracy"] == 1.0  # the student's answers, in the right columns, and never the new label


def test_a_cancel_during_the_labelling_saves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from classifier import classify
    from trainer import candidates
    from trainer import run as run_module

    monkeypatch.setattr(candidates, "embed_examples", lambda rows, encoder: fake_embed([r["text"] for r in rows]))
    monkeypatch.setattr(run_module, "LABEL_CHUNK", 50)
    config = toy_config(
        tiny_model_dir, baseline=True, epochs=1, embedding_model="minilm", max_steps=2, unlabelled_max=3000
    )
    run_dir = make_run_dir(tmp_path / "run", config, toy_examples(per_label=10))
    write_pool(run_dir, pool_texts(150))
    real, calls = classify.predict, []

    def predict(scorer, items, **kwargs):
        calls.append(len(items))
        if len(items) == 50 and len(calls) > 1:  # the pool's first chunk is labelled: someone cancels
            run_module.request_cancel(run_dir)
        return real(scorer, items, **kwargs)

    monkeypatch.setattr(classify, "predict", predict)
    result = run_module.run(run_dir)
    assert result["status"] == "cancelled" and not (run_dir / "adapter").exists()
    assert calls.count(50) == 1  # it stopped at the next chunk


def test_a_run_on_another_encoder_or_without_the_embedding_candidates_gets_no_pool(env):
    from bot.runs.execute import prepare_run
    from bot.settings import load_settings
    from storage import open_db, runs

    settings = load_settings({"SUPPORTBOT_DATA_DIR": str(env / "data")}, env_file=None)
    db = open_db(settings.db_path)
    labels.add_label_def(db, "complaint", "c")
    labels.add_label_def(db, "question", "q")
    for i in range(3):
        m, _ = messages.add_message(db, source="email", external_id=f"u{i}", raw_body=f"u {i}", clean_body=f"u {i}")
        stored.add_embedding(db, m.id, "all-mpnet-base-v2", np.zeros(768, dtype="<f4").tobytes())
    twin, _ = messages.add_message(db, source="email", external_id="twin", raw_body="u 2", clean_body="u 2")
    labels.add_label(db, twin.id, "complaint", by="U1", method="cli")  # a labelled copy of an unlabelled one
    for params, expected in (
        ({"unlabelled_max": 10}, 2),  # u 2 has a labelled twin (it could be an eval row): left out
        ({"unlabelled_max": 10, "embedding_model": "minilm"}, 0),  # the stored vectors are mpnet's
        ({"unlabelled_max": 10, "baseline": False}, 0),  # no embedding candidates, no student
        ({}, 0),  # off by default
    ):
        run = runs.queue_run(db, requested_by="U1", params=params)
        run_dir = prepare_run(settings, db, run)
        written = (run_dir / POOL_TEXTS).read_text().splitlines() if (run_dir / POOL_TEXTS).exists() else []
        assert len(written) == expected, params
        assert (run_dir / POOL_VECTORS).exists() == bool(expected)
        if expected:
            assert os.stat(run_dir / POOL_TEXTS).st_mode & 0o077 == 0
        runs.finish_run(db, run.id, "cancelled")


def test_ray_runs_take_the_pool_with_them():
    from bot.runs.ray import INPUTS

    assert POOL_TEXTS in INPUTS and POOL_VECTORS in INPUTS


def test_a_distilled_choice_without_an_embedding_classifier_serves_the_adapter_and_says_why(workspace):  # noqa: F811
    settings, db, _ = workspace
    names = ["complaint", "feedback", "question"]
    serve_distilled(db, "/nowhere", names)
    classifier = minilm_classifier(settings)
    classifier.refit(db)  # no labelled message: no embedding classifier
    state = classifier._wanted(db)
    assert state.kind == "adapter" and "no embedding classifier" in state.note
    classifier.close()
