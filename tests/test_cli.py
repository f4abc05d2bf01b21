import json
import subprocess
import sys

import pytest

from .conftest import BANKING77, REPO, supportbot


def test_init_labels_import_stats_export(env):
    assert "Database ready" in supportbot("init").stdout
    supportbot("labels", "add", "complaint", "--description", "Customer is unhappy")
    csv = env / "msgs.csv"
    csv.write_text("text,label\nThe app crashed again,complaint\nLove the new dashboard,feedback\nhello,\n")
    assert "Imported 3 of 3 rows" in supportbot("import", str(csv)).stdout
    stats = json.loads(supportbot("stats", "--json").stdout)
    assert stats == {"messages": 3, "labeled": 2, "labels": {"complaint": 1, "feedback": 1}}
    listed = json.loads(supportbot("labels", "list", "--json").stdout)
    assert {"name": "complaint", "description": "Customer is unhappy", "count": 1} in listed
    for fmt, key in (("alpaca", "output"), ("chatml", "messages")):
        rows = [json.loads(line) for line in supportbot("export", "--format", fmt).stdout.splitlines()]
        assert len(rows) == 2 and all(key in r for r in rows)
    chat = json.loads(supportbot("export", "--format", "chatml").stdout.splitlines()[0])
    assert "complaint: Customer is unhappy" in chat["messages"][0]["content"]
    assert chat["messages"][-1] == {"role": "assistant", "content": "complaint"}


def test_export_round_trips_through_import(env):
    csv = env / "msgs.csv"
    csv.write_text("text,label\nWhere is my refund?,refund\nThanks a lot,feedback\n")
    supportbot("import", str(csv))
    out = env / "export.jsonl"
    supportbot("export", "--format", "alpaca", "--out", str(out))
    env2 = env / "second"
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "import", str(out), "--json"],
        capture_output=True,
        text=True,
        env={"SUPPORTBOT_DATA_DIR": str(env2), "PATH": ""},
    )
    assert json.loads(result.stdout)["stored"] == 2
    assert sorted(
        json.loads(
            subprocess.run(
                [sys.executable, "-m", "bot.cli", "stats", "--json"],
                capture_output=True,
                text=True,
                env={"SUPPORTBOT_DATA_DIR": str(env2), "PATH": ""},
            ).stdout
        )["labels"]
    ) == ["feedback", "refund"]


def test_bad_import_and_bad_setting_are_one_clear_line(env, monkeypatch):
    bad = env / "bad.csv"
    bad.write_text("text,label\nfine,a\n,b\n")
    result = supportbot("import", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {bad}, line 3: empty text (nothing was imported)"
    assert json.loads(supportbot("stats", "--json").stdout)["messages"] == 0
    monkeypatch.setenv("SUPPORTBOT_REPORT_CHANNEL", "#reports")
    result = supportbot("stats", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: SUPPORTBOT_REPORT_CHANNEL: expected comma-separated Slack channel ids")


@pytest.mark.skipif(not (BANKING77 / "train.csv").exists(), reason="Banking77 data not present beside the repo")
def test_banking77_import(env):
    supportbot("import", str(BANKING77 / "train.csv"), "--text-col", "text", "--label-col", "category")
    stats = json.loads(supportbot("stats", "--json").stdout)
    assert stats["messages"] == 10003 and stats["labeled"] == 10003
    assert len(stats["labels"]) == 77 and sum(stats["labels"].values()) == 10003


def test_datacheck_json_lists_findings_with_ids_and_labels(env):
    csv = env / "msgs.csv"
    csv.write_text(
        "text,label\nWhere is my parcel?,question\nwhere is my parcel,complaint\n"
        + "".join(f"the app crashed {i},complaint\nhow do I pay {i},question\n" for i in range(3))
    )
    supportbot("import", str(csv))
    report = json.loads(supportbot("datacheck", "--json").stdout)
    assert report["examples"] == 8 and report["summary"]["conflict"] == 1
    conflict = next(f for f in report["findings"] if f["kind"] == "conflict")
    assert conflict["ids"] == [1, 2] and conflict["labels"] == ["complaint", "question"]
    assert "1 conflict" in supportbot("datacheck").stdout


def test_backup_restores_messages_labels_and_adapters(env, monkeypatch):
    from storage import adapters, labels, open_db

    (env / "m.csv").write_text("text,label\nRefund please,refund\nThanks!,feedback\n")
    supportbot("import", str(env / "m.csv"))
    adapter_dir = env / "data" / "adapters" / "run-1"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"weights")
    db = open_db(env / "data" / "supportbot.db")
    a = adapters.register_adapter(db, path=str(adapter_dir), base_model="m", labels=["refund"], metrics={})
    adapters.promote(db, a.version)
    supportbot("backup", str(env / "backup.tar.gz"))

    assert "exists; restoring would replace it" in supportbot("restore", str(env / "backup.tar.gz"), check=False).stderr
    monkeypatch.setenv("SUPPORTBOT_DATA_DIR", str(env / "restored"))
    assert "Restored 2 messages" in supportbot("restore", str(env / "backup.tar.gz")).stdout
    restored = open_db(env / "restored" / "supportbot.db")
    assert labels.label_counts(restored) == {"feedback": 1, "refund": 1}
    current = adapters.current_adapter(restored)
    assert current.path == str(env / "restored" / "adapters" / "run-1")
    assert (env / "restored" / "adapters" / "run-1" / "adapter_model.safetensors").read_bytes() == b"weights"


def test_export_writes_the_prompt_and_answer_training_uses(env):
    """Over 30 labels the trained prompt hides the list and answers in words; the export must say the same."""
    from bot.runs.execute import prepare_run
    from bot.settings import load_settings
    from classifier.prompts import prompt_messages
    from storage import labels, messages, open_db, runs
    from trainer.config import load_config
    from trainer.data import read_jsonl
    from trainer.run import prompt_spec

    names = [f"intent_{i:02d}" for i in range(31)]
    csv = env / "many.csv"
    csv.write_text("text,label\n" + "".join(f"message {i} {j},{n}\n" for i, n in enumerate(names) for j in range(2)))
    supportbot("import", str(csv))
    settings = load_settings()
    db = open_db(settings.db_path)
    email, _ = messages.add_message(
        db,
        source="email",
        external_id="slack:C1:1.1",
        raw_body="Card never came",
        subject="Where is my card",
        channel="C1",
        ts="1.1",
    )
    labels.add_label(db, email.id, "intent_00", by="U1", method="button")
    run_dir = prepare_run(settings, db, runs.queue_run(db, requested_by="test"))
    spec = prompt_spec(load_config(run_dir / "config.json"))
    trained = read_jsonl(run_dir / "train.jsonl")
    chat = [json.loads(line) for line in supportbot("export", "--format", "chatml").stdout.splitlines()]
    assert [r["messages"] for r in chat] == [
        prompt_messages(spec, e["text"], e.get("subject")) + [{"role": "assistant", "content": spec.answer(e["label"])}]
        for e in trained
    ]
    assert "intent_05" not in chat[0]["messages"][0]["content"]  # no label list above 30 labels
    assert chat[0]["messages"][-1]["content"] == "intent 00" and chat[0]["label"] == "intent_00"
    assert chat[-1]["messages"][1]["content"].count("Where is my card") == 1  # the subject once
    alpaca = [json.loads(line) for line in supportbot("export", "--format", "alpaca").stdout.splitlines()]
    assert [[r["instruction"], r["input"], r["output"]] for r in alpaca] == [
        [m["content"] for m in r["messages"]] for r in chat
    ]
    out = env / "export.jsonl"
    supportbot("export", "--format", "alpaca", "--out", str(out))
    again = subprocess.run(
        [sys.executable, "-m", "bot.cli", "import", str(out), "--json"],
        capture_output=True,
        text=True,
        env={"SUPPORTBOT_DATA_DIR": str(env / "second"), "PATH": "", "PYTHONPATH": str(REPO)},
    )
    assert json.loads(again.stdout)["labels_added"] == sorted(names)  # names, not their readable answers
