import json

import pytest

from storage import ImportFormatError, importing, labels, messages
from textprep.cleaning import text_cleaner

CLEAN = text_cleaner(redact_personal=False)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_import_with_named_columns(db, tmp_path):
    f = write(
        tmp_path / "in.csv", 'body,intent\n"My card, it broke",complaint\nHow do I pay?,question\nunlabeled one,\n'
    )
    examples = importing.read_examples(f, text_col="body", label_col="intent")
    result = importing.import_examples(db, f, examples, clean=CLEAN)
    assert (result.stored, result.labels_added) == (3, ["complaint", "question"])
    assert messages.count_messages(db) == 3
    assert labels.label_counts(db) == {"complaint": 1, "question": 1}
    again = importing.import_examples(
        db, f, importing.read_examples(f, text_col="body", label_col="intent"), clean=CLEAN
    )
    assert (again.stored, again.already_present) == (0, 3)


def test_alpaca_and_chatml_jsonl_told_apart_by_content(db, tmp_path):
    rows = [
        {"instruction": "Classify", "input": "Refund please", "output": "refund"},
        {"instruction": "Where is my parcel?", "input": "", "output": "question"},
        {
            "messages": [
                {"role": "system", "content": "Classify"},
                {"role": "user", "content": "Great service"},
                {"role": "assistant", "content": "feedback"},
            ]
        },
    ]
    f = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    examples = importing.read_examples(f)
    assert [(e.text, e.label) for e in examples] == [
        ("Refund please", "refund"),
        ("Where is my parcel?", "question"),
        ("Great service", "feedback"),
    ]
    importing.import_examples(db, f, examples, clean=CLEAN)
    assert labels.label_counts(db) == {"feedback": 1, "question": 1, "refund": 1}


@pytest.mark.parametrize(
    "name, content, line, reason",
    [
        ("bad.csv", "text,label\nok,a\n,b\n", 3, "empty text"),
        ("bad.csv", 'text,label\nok,a\n"multi\nline",b\nx,y,z\n', 5, "more fields"),
        ("bad.csv", "label\na\n", 1, "no column 'text'"),
        ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{oops\n', 2, "not valid JSON"),
        ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{"text": "x"}\n', 2, "neither Alpaca"),
        ("bad.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', 1, "no user turn"),
        ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "two words"}\n', 1, "invalid label name"),
        ("bad.txt", "hello\n", 1, "unsupported file type"),
        (
            "bad.jsonl",
            '{"instruction": "a", "input": "b", "output": "c"}\n{"input": "caf\\ud800", "output": "c"}\n',
            2,
            "text holds a lone surrogate (U+D800",
        ),
        (
            "bad.jsonl",
            '{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "c"}]}\n',
            1,
            "text holds a lone surrogate (U+DFFF",
        ),
        (
            "bad.jsonl",
            '{"instruction": "a", "input": "b", "output": "c"}\n{"input": "b", "output": 1' + "0" * 5000 + "}\n",
            2,
            "`output` is a number of 5,001 digits (at most 4,300)",
        ),
        (
            "bad.jsonl",
            '{"messages": [{"role": "user", "content": -' + "9" * 4301 + "}]}\n",
            1,
            "`messages[0].content` is a number of 4,301 digits",
        ),
    ],
)
def test_broken_file_rejected_whole_with_line_number(db, tmp_path, name, content, line, reason):
    f = write(tmp_path / name, content)
    with pytest.raises(ImportFormatError) as err:
        importing.import_examples(db, f, importing.read_examples(f), clean=CLEAN)
    assert err.value.line == line and reason in str(err.value)
    assert "nothing was imported" in str(err.value)
    assert messages.count_messages(db) == 0 and labels.list_label_defs(db) == []


def test_non_utf8_file_names_its_line(db, tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes("text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(ImportFormatError, match="line 3: text is not UTF-8"):
        importing.read_examples(f)


def test_imported_text_is_cleaned_and_redacted_like_slack_intake(db, tmp_path):
    """The file's text is kept as the raw body; the body models read is what every door's cleaning makes of it."""
    f = write(
        tmp_path / "mail.csv",
        'text,label\n"<p>My card 4111 1111 1111 1111 was charged twice, mail me at '
        'ann@example.com or +44 20 7946 0958</p>\n\n-- \nAnn Smith\nSent from my iPhone",complaint\n',
    )
    importing.import_examples(db, f, importing.read_examples(f), clean=text_cleaner(redact_personal=True))
    m = messages.get_message(db, 1)
    assert "ann@example.com" in m.raw_body and "4111" in m.raw_body
    assert "ann@example.com" not in m.clean_body and "4111" not in m.clean_body and "7946" not in m.clean_body
    assert "[email]" in m.clean_body and "[card]" in m.clean_body and "[phone]" in m.clean_body
    assert "<p>" not in m.clean_body and "Sent from my iPhone" not in m.clean_body
    assert m.content_hash == messages.content_hash(None, m.clean_body)


def test_the_demo_set_goes_through_the_same_cleaning(db, tmp_path, monkeypatch):
    from bot import local

    demo = tmp_path / "demo"
    demo.mkdir()
    write(demo / "labels.csv", "name,description\ncomplaint,Unhappy\nquestion,Asks\n")
    write(demo / "emails.csv", 'text,label\n"Write to bob@example.com, it broke",complaint\nHow do I pay?,question\n')
    monkeypatch.setattr(local, "DEMO", demo)
    assert local.seed_demo(db, redact=True) == 2
    first = messages.get_message(db, 1)
    assert "bob@example.com" in first.raw_body and first.clean_body == "Write to [email], it broke"
