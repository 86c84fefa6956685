"""Reading CSV/JSONL/Parquet and the errors that name file, line and column."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from autoglm.errors import ConfigError
from autoglm.training.data import (
    DataError,
    check_labels,
    check_numeric,
    locate,
    read_frame,
    read_records,
    require_columns,
    split_frame,
)

ROWS = [
    {"age": 31, "city": "Oslo", "label": 0},
    {"age": 45, "city": "Lima", "label": 1},
    {"age": 22, "city": "Oslo", "label": 1},
    {"age": 58, "city": "Pune", "label": 0},
]


def write_all(tmp_path: Path) -> dict[str, Path]:
    frame = pd.DataFrame(ROWS)
    paths = {"csv": tmp_path / "t.csv", "jsonl": tmp_path / "t.jsonl", "parquet": tmp_path / "t.parquet"}
    frame.to_csv(paths["csv"], index=False)
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    frame.to_parquet(paths["parquet"], index=False)
    return paths


def test_csv_jsonl_and_parquet_read_the_same_frame(tmp_path):
    paths = write_all(tmp_path)
    frames = {k: read_frame(p) for k, p in paths.items()}
    for kind, frame in frames.items():
        assert list(frame.columns) == ["age", "city", "label"], kind
        assert frame["age"].tolist() == [31, 45, 22, 58], kind
        assert frame["city"].tolist() == ["Oslo", "Lima", "Oslo", "Pune"], kind
        assert frame["label"].tolist() == [0, 1, 1, 0], kind


def test_glob_concatenates_and_locates_rows_per_file(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,y\n5,6\n7,oops\n")
    frame = read_frame(tmp_path / "*.csv")
    assert frame["x"].tolist() == [1, 3, 5, 7]
    where = locate(frame, 3)
    assert (Path(where.file).name, where.row, where.line) == ("b.csv", 2, 3)
    with pytest.raises(DataError) as e:
        check_numeric(frame, "y")
    assert (Path(e.value.file).name, e.value.row, e.value.line, e.value.column) == ("b.csv", 2, 3, "y")


def test_glob_with_different_columns_is_an_error(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text("x,z\n1,2\n")
    with pytest.raises(DataError, match=r"b\.csv: has other columns .*missing \['y'\].*extra \['z'\]"):
        read_frame(tmp_path / "*.csv")


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_frame(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no files match"):
        read_frame(tmp_path / "*.jsonl")


@pytest.mark.parametrize("name,content", [("e.csv", ""), ("h.csv", "a,b\n"), ("e.jsonl", "\n\n")])
def test_empty_files_have_no_rows(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match="has no rows"):
        read_frame(tmp_path / name)
    with pytest.raises(DataError, match="has no rows"):
        read_records(tmp_path / name)


def test_bad_json_line_is_named_by_its_line_number(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3,,}\n')
    for reader in (read_frame, read_records):
        with pytest.raises(DataError) as e:
            reader(path)
        assert e.value.line == 4 and e.value.row == 3  # the blank line counts as a line, not a row
        assert str(e.value).startswith(f"{path}:4: is not valid JSON")


def test_unknown_extension_lists_formats(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("a\n1\n")
    with pytest.raises(DataError, match=r"data\.txt: cannot tell the format.*'\.txt'.*\.csv.*\.jsonl.*\.parquet"):
        read_frame(path)
    assert read_frame(path, format="csv")["a"].tolist() == [1]  # an explicit format wins


def test_missing_column_lists_the_columns(tmp_path):
    frame = read_frame(write_all(tmp_path)["csv"])
    with pytest.raises(DataError) as e:
        require_columns(frame, ["age", "lable"])
    assert str(e.value) == (f"{tmp_path / 't.csv'}: column 'lable' is missing (did you mean 'label'?); "
                            "columns are: age, city, label")
    assert e.value.row is None and e.value.line is None


def test_non_numeric_value_at_its_exact_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('age,note\n31,a\n45,"two\nlines"\n4x,c\n')  # a quoted field spans lines 3-4
    frame = read_frame(path)
    with pytest.raises(DataError) as e:
        check_numeric(frame, "age")
    assert (e.value.row, e.value.line, e.value.column) == (3, 5, "age")
    assert str(e.value) == f"{path}:5 column 'age': expected a number; got '4x'"


def test_negative_value_below_minimum(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"w": 1}\n{"w": 0}\n{"w": -2}\n')
    with pytest.raises(DataError, match=r"w\.jsonl:3 column 'w': must be at least 0; got -2"):
        check_numeric(read_frame(path), "w", min_value=0.0)


def test_unknown_label_at_its_exact_row(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("x,label\n1,0\n2,1\n3,maybe\n")
    frame = read_frame(path)
    with pytest.raises(DataError) as e:
        check_labels(frame["label"], [0, 1], frame=frame)
    assert (e.value.row, e.value.line, e.value.column) == (3, 4, "label")
    assert "unknown label 'maybe'; labels seen in training: 0, 1" in str(e.value)
    check_labels(frame["label"].iloc[:2], [0, 1], frame=frame)  # "0" from CSV equals 0


def test_parquet_rows_are_named_by_row(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"age": ["1", "2", "x"]}).to_parquet(path)
    with pytest.raises(DataError) as e:
        check_numeric(read_frame(path), "age")
    assert (e.value.row, e.value.line) == (3, None)
    assert str(e.value).startswith(f"{path} row 3 column 'age'")


def test_read_records_keeps_nested_messages_and_locations(tmp_path):
    path = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path.write_text(json.dumps({"messages": msgs}) + "\n\n" + json.dumps({"messages": msgs[:1]}) + "\n")
    records = read_records(path)
    assert [r.data["messages"] for r in records] == [msgs, msgs[:1]]
    assert [(r.location.row, r.location.line) for r in records] == [(1, 1), (2, 3)]
    err = records[1].location.error("needs an assistant turn", column="messages")
    assert isinstance(err, ConfigError) and str(err) == f"{path}:3 column 'messages': needs an assistant turn"

    pq = tmp_path / "chat.parquet"
    pd.DataFrame({"messages": [msgs]}).to_parquet(pq)
    assert read_records(pq)[0].data["messages"] == msgs  # Parquet nested lists come back as lists of dicts


def test_split_is_deterministic_and_stratified():
    frame = pd.DataFrame({"x": range(200), "y": [1 if i % 5 == 0 else 0 for i in range(200)]})
    a_train, a_valid = split_frame(frame, 0.25, seed=3, stratify="y")
    b_train, b_valid = split_frame(frame, 0.25, seed=3, stratify="y")
    assert a_valid.index.tolist() == b_valid.index.tolist()
    assert len(a_valid) == 50 and int(a_valid["y"].sum()) == 10  # the 20% class keeps its share
    assert set(a_train.index).isdisjoint(a_valid.index) and len(a_train) + len(a_valid) == 200
    _, c_valid = split_frame(frame, 0.25, seed=4, stratify="y")
    assert c_valid.index.tolist() != a_valid.index.tolist()
