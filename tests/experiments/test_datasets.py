import json

import pytest

from experiments.datasets import load_dataset, read_rows, split_dataset
from programs import DatasetError
from programs.builtin import Triage


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


GOOD = {"message": "荷物が届きません", "category": "shipping", "reply": "ご不便をおかけしております。"}


def test_jsonl_and_csv_load_the_same(tmp_path):
    jsonl = write(tmp_path / "d.jsonl", json.dumps(GOOD, ensure_ascii=False) + "\n\n")
    csv = write(tmp_path / "d.csv", "message,category,reply\n荷物が届きません,shipping,ご不便をおかけしております。\n")
    a, b = load_dataset(jsonl, Triage()), load_dataset(csv, Triage())
    assert a.examples[0].toDict() == b.examples[0].toDict() == GOOD
    assert a.digest == b.digest and len(a.digest) == 64
    assert a.examples[0].inputs().toDict() == {"message": "荷物が届きません"}


@pytest.mark.parametrize("name, text, message", [
    ("d.jsonl", '{"message": "x", "category": "billing", "reply": "r"}\n{bad json\n',
     r"d.jsonl:2: malformed JSON"),
    ("d.jsonl", '[1, 2]\n', r"d.jsonl:1: expected a JSON object, got list"),
    ("d.jsonl", '{"message": "x", "reply": "r"}\n', r"d.jsonl:1: field 'category': missing"),
    ("d.jsonl", '{"message": " ", "category": "billing", "reply": "r"}\n', r"d.jsonl:1: field 'message': empty"),
    ("d.jsonl", '{"message": "x", "category": "spam", "reply": "r"}\n',
     r"d.jsonl:1: field 'category': label 'spam' is not one of: billing, shipping"),
    ("d.csv", "message,category,reply\nx,billing\n", r"d.csv:2: malformed CSV row: 2 values for 3 columns"),
    ("d.csv", "message,category\nx,billing\n", r"d.csv:2: field 'reply': missing"),
    ("d.jsonl", "", r"d.jsonl: the file holds no examples"),
    ("d.txt", "hello", r"d.txt: unsupported file type '.txt'"),
])
def test_bad_files_name_file_line_and_field(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, Triage())


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.jsonl: file not found"):
        read_rows(tmp_path / "nope.jsonl")


def test_not_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"message\n\xff\xfe\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_rows(path)


def test_split_is_seeded_and_disjoint(tmp_path):
    rows = [dict(GOOD, message=f"m{i}") for i in range(10)]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    examples = load_dataset(path, Triage()).examples
    train, val = split_dataset(examples, seed=1)
    again_train, _ = split_dataset(examples, seed=1)
    assert [e.message for e in train] == [e.message for e in again_train]
    assert len(train) == 6 and len(val) == 4
    assert not {e.message for e in train} & {e.message for e in val}
    assert [e.message for e in split_dataset(examples, seed=2)[1]] != [e.message for e in val]
    with pytest.raises(DatasetError, match="at least 2 examples"):
        split_dataset(examples[:1], seed=0)
