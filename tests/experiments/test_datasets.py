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


def test_not_utf8_names_the_line_and_byte_column(tmp_path):
    path = tmp_path / "d.csv"
    # Line 3 starts with 荷 (3 bytes in UTF-8), then a Latin-1 byte: byte column 4 of line 3.
    path.write_bytes("message,category,reply\nx,billing,r\n荷".encode() + b"\xe9t\xe9,billing,r\n")
    with pytest.raises(DatasetError, match=r"d.csv:3: not UTF-8 text: byte 0xe9 at byte column 4 "):
        read_rows(path)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'{"message": "ok"}\r\n{"message": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:2: not UTF-8 text: byte 0xff at byte column 14 "):
        read_rows(jsonl)


@pytest.mark.parametrize("name, text", [
    ("d.csv", "message,category,reply\r\n荷物が届きません,shipping,ご不便をおかけしております。\r\n"),
    ("d.jsonl", json.dumps(GOOD, ensure_ascii=False) + "\n"),
])
def test_utf8_byte_order_mark_is_accepted(tmp_path, name, text):
    """Spreadsheet programs save CSV as UTF-8 with a BOM; it is not part of the first column's name."""
    plain = write(tmp_path / name, text)
    expected = load_dataset(plain, Triage())
    with_bom = tmp_path / f"bom-{name}"
    with_bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    loaded = load_dataset(with_bom, Triage())
    assert loaded.examples[0].toDict() == GOOD
    assert loaded.digest == expected.digest
    assert loaded.lines == expected.lines == ((2,) if name == "d.csv" else (1,))


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
