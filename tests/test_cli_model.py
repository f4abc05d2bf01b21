"""The model commands of the CLI (train, classify, eval) with the tiny model, as a user runs them."""

import csv
import json

import pytest

from storage import adapters, open_db, runs

from .conftest import supportbot, toy_examples

TINY_TRAINING = [
    "--set",
    "learning_rate=0.01",
    "--set",
    "grad_accum=1",
    "--epochs",
    "8",
    "--set",
    'target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]',
]


@pytest.fixture
def toy_workspace(env, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("SUPPORTBOT_BASE_MODEL", tiny_model_dir)
    monkeypatch.setenv("SUPPORTBOT_ZERO_SHOT_MODEL", tiny_model_dir)
    path = env / "toy.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for e in toy_examples():
            writer.writerow([e["text"], e["label"]])
    supportbot("import", str(path))
    return env, path


def test_train_registers_and_serves_then_gates_the_next_run(toy_workspace):
    env, toy_csv = toy_workspace
    # The first run without the other candidates: the adapter is promoted as it always was, and serves.
    first = json.loads(supportbot("train", "--json", *TINY_TRAINING, "--set", "baseline=false").stdout)
    assert first["run"] == 1 and first["status"] == "succeeded" and first["promoted"]
    assert first["adapter_version"] == 1 and first["metrics"]["accuracy"] >= 0.75
    assert set(first["metrics"]) >= {"accuracy", "macro_f1", "n"}

    db = open_db(env / "data" / "supportbot.db")
    assert adapters.current_adapter(db).version == 1
    assert len(runs.run_metrics(db, 1)) > 5  # followed from metrics.jsonl into storage
    assert (env / "data" / "adapters" / "run-1" / "adapter_model.safetensors").exists()

    p = json.loads(supportbot("classify", "--json", "how when where can what").stdout)
    assert p["adapter_version"] == 1 and not p["zero_shot"] and p["label"] in ("complaint", "question", "feedback")
    assert p["model"] == "adapter v1"
    assert set(p) == {"label", "confidence", "needs_review", "adapter_version", "zero_shot", "model", "scores"}

    report = json.loads(supportbot("eval", str(toy_csv), "--json").stdout)
    assert (
        report["n"] == 60
        and report["accuracy"] >= 0.7
        and set(report["per_class"]) == {"complaint", "question", "feedback"}
    )

    # The second run goes through the serving gate: the serving adapter, the new one, the embeddings and
    # their ensemble on the same split; what the gate picks is what answers next.
    second = json.loads(supportbot("train", "--json", *TINY_TRAINING, "--set", "max_steps=1").stdout)
    result = json.loads((env / "data" / "runs" / "run-2" / "result.json").read_text())
    assert result["serving"]["path"].endswith("adapters/run-1")
    names = {c["name"] for c in result["gate"]["candidates"]}
    assert names == {"new adapter", "embeddings", "new adapter + embeddings", "adapter v1"}
    assert second["promoted"] == result["promotion"]["promote"] == result["gate"]["new"]
    picked = {"new adapter": "adapter v2", "new adapter + embeddings": "adapter v2 + embeddings"}.get(
        result["gate"]["picked"], result["gate"]["picked"]
    )
    assert json.loads(supportbot("classify", "--json", "how when where can what").stdout)["model"] == picked


def test_classify_file_with_the_embeddings_before_any_adapter(toy_workspace):
    env, toy_csv = toy_workspace
    out = env / "out.csv"
    supportbot("classify", "--file", str(toy_csv), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 60 and all(r["predicted_label"] in ("complaint", "question", "feedback") for r in rows)
    # No adapter yet, but 60 labelled messages: the embedding classifier answers (and learned the toy task).
    assert all(r["adapter_version"] == "" and r["model"] == "embeddings" for r in rows)
    assert sum(r["predicted_label"] == r["label"] for r in rows) >= 55
    hostile = env / "hostile.csv"
    hostile.write_text('text,note\n"=HYPERLINK(""http://evil.example"",""x"")",@SUM(A1)\nplain words,-2\n')
    supportbot("classify", "--file", str(hostile), "--out", str(env / "hostile_out.csv"))
    cells = list(csv.DictReader((env / "hostile_out.csv").open()))
    assert cells[0]["text"].startswith("'=HYPERLINK(") and cells[0]["note"] == "'@SUM(A1)"
    assert cells[1]["text"] == "plain words" and cells[1]["note"] == "'-2"
    p = json.loads(supportbot("classify", "--json", "hello there").stdout)
    assert p["model"] == "embeddings" and p["zero_shot"] is False


def test_classify_out_opens_like_export_out(toy_workspace):
    import os
    import stat

    env, toy_csv = toy_workspace
    kept = env / "kept.csv"
    kept.write_text("precious\n")
    refused = supportbot("classify", "--file", str(toy_csv), "--out", str(kept), check=False)
    assert refused.returncode != 0 and "exists; use --force to replace it" in refused.stderr
    assert kept.read_text() == "precious\n"  # refused before anything was written
    link = env / "link.csv"
    link.symlink_to(kept)
    followed = supportbot("classify", "--file", str(toy_csv), "--out", str(link), "--force", check=False)
    assert followed.returncode != 0 and "is a symbolic link; not following it" in followed.stderr
    assert kept.read_text() == "precious\n"
    supportbot("classify", "--file", str(toy_csv), "--out", str(kept), "--force")
    assert len(list(csv.DictReader(kept.open()))) == 60
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600


def test_model_commands_refuse_bad_input_clearly(toy_workspace, monkeypatch):
    env, toy_csv = toy_workspace
    assert (
        supportbot("classify", "   ", check=False).stderr.strip()
        == "Error: nothing to classify: the text is empty or only whitespace"
    )
    result = supportbot("train", "--set", "lerning_rate=1", check=False)
    assert result.returncode == 2 and "expected KEY=VALUE with KEY one of" in result.stderr
    # A workspace with labels but no labelled message answers zero-shot, which needs the zero-shot model.
    monkeypatch.setenv("SUPPORTBOT_DATA_DIR", str(env / "fresh"))
    supportbot("labels", "add", "complaint")
    supportbot("labels", "add", "question")
    monkeypatch.setenv("SUPPORTBOT_ZERO_SHOT_MODEL", str(env / "missing-model"))
    result = supportbot("classify", "hello", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "missing-model" in result.stderr


def test_train_refuses_data_that_cannot_train(env):
    (env / "one.csv").write_text("text,label\nonly one,complaint\nanother,complaint\n")
    supportbot("import", str(env / "one.csv"))
    result = supportbot("train", check=False)
    assert result.returncode == 1
    assert "every example is labeled 'complaint'" in result.stderr
    assert runs.list_runs(open_db(env / "data" / "supportbot.db")) == []  # nothing queued
