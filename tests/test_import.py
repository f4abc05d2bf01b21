import json

import pytest

from storage import ImportFormatError
from storage import importing, labels, messages


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_import_with_named_columns(db, tmp_path):
    f = write(tmp_path / "in.csv", 'body,intent\n"My card, it broke",complaint\nHow do I pay?,question\nunlabeled one,\n')
    examples = importing.read_examples(f, text_col="body", label_col="intent")
    result = importing.import_examples(db, f, examples)
    assert (result.stored, result.labels_added) == (3, ["complaint", "question"])
    assert messages.count_messages(db) == 3
    assert labels.label_counts(db) == {"complaint": 1, "question": 1}
    again = importing.import_examples(db, f, importing.read_examples(f, text_col="body", label_col="intent"))
    assert (again.stored, again.already_present) == (0, 3)


def test_alpaca_and_chatml_jsonl_told_apart_by_content(db, tmp_path):
    rows = [
        {"instruction": "Classify", "input": "Refund please", "output": "refund"},
        {"instruction": "Where is my parcel?", "input": "", "output": "question"},
        {"messages": [{"role": "system", "content": "Classify"}, {"role": "user", "content": "Great service"},
                      {"role": "assistant", "content": "feedback"}]},
    ]
    f = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    examples = importing.read_examples(f)
    assert [(e.text, e.label) for e in examples] == [
        ("Refund please", "refund"), ("Where is my parcel?", "question"), ("Great service", "feedback")]
    importing.import_examples(db, f, examples)
    assert labels.label_counts(db) == {"feedback": 1, "question": 1, "refund": 1}


@pytest.mark.parametrize("name, content, line, reason", [
    ("bad.csv", "text,label\nok,a\n,b\n", 3, "empty text"),
    ("bad.csv", 'text,label\nok,a\n"multi\nline",b\nx,y,z\n', 5, "more fields"),
    ("bad.csv", "label\na\n", 1, "no column 'text'"),
    ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{oops\n', 2, "not valid JSON"),
    ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{"text": "x"}\n', 2, "neither Alpaca"),
    ("bad.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', 1, "no user turn"),
    ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "two words"}\n', 1, "invalid label name"),
    ("bad.txt", "hello\n", 1, "unsupported file type"),
    ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{"input": "caf\\ud800", "output": "c"}\n', 2,
     "text holds a lone surrogate (U+D800"),
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "c"}]}\n',
     1, "text holds a lone surrogate (U+DFFF"),
    ("bad.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{"input": "b", "output": 1' + "0" * 5000 + '}\n',
     2, "`output` is a number of 5,001 digits (at most 4,300)"),
    ("bad.jsonl", '{"messages": [{"role": "user", "content": -' + "9" * 4301 + '}]}\n', 1,
     "`messages[0].content` is a number of 4,301 digits"),
])
def test_broken_file_rejected_whole_with_line_number(db, tmp_path, name, content, line, reason):
    f = write(tmp_path / name, content)
    with pytest.raises(ImportFormatError) as err:
        importing.import_examples(db, f, importing.read_examples(f))
    assert err.value.line == line and reason in str(err.value)
    assert "nothing was imported" in str(err.value)
    assert messages.count_messages(db) == 0 and labels.list_label_defs(db) == []


def test_non_utf8_file_names_its_line(db, tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes("text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(ImportFormatError, match="line 3: text is not UTF-8"):
        importing.read_examples(f)
