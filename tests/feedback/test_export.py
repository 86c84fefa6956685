"""Export: the seed's weighting rule with recency, implicit scaling, de-duplication, min support; DPO pairs
from corrections and preferences; KTO labels; and the rows pass the trainers' own validation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.errors import ConfigError
from autoglm.feedback.conversation import conv_hash
from autoglm.feedback.export import ExportOptions, export_rows, write_jsonl
from autoglm.feedback.store import Exchange, Feedback
from autoglm.training.data import read_records
from autoglm.training.preference import preference_examples
from autoglm.training.text_data import examples_from_records

NOW = 1_800_000_000.0
DAY = 86400.0
Q1 = [{"role": "user", "content": "Capital of France?"}]
Q2 = [{"role": "user", "content": "Capital of Spain?"}]


def put(fs, rid: str, messages: list, answer: str) -> None:
    request = {"messages": messages}
    response = {"choices": [{"index": 0, "message": {"content": answer}}]}
    e = Exchange(rid, "k", "chat", "m", NOW - DAY, 1, conv_hash("chat", request), request, response)
    fs.put_exchange(e, json.dumps(request), json.dumps(response))


def rate(fs, fid: str, rid: str, age_days: float = 0.0, source: str = "explicit", **kw) -> None:
    fs.add_feedback(Feedback(fid, rid, 0, "k", source, created_at=NOW - age_days * DAY, **kw))


def export(fs, fmt: str, **kw):
    return export_rows(fs, ExportOptions(format=fmt, now=NOW, **kw))


def test_sft_weight_is_the_seeds_rule_with_recency(sqlite_fs):
    put(sqlite_fs, "a", Q1, "Paris.")
    rate(sqlite_fs, "f1", "a", rating=1.0)
    rate(sqlite_fs, "f2", "a", age_days=30, rating=0.5)  # one half-life old: counts 0.25
    rows = export(sqlite_fs, "sft", lr=0.4).rows
    assert rows == [{"messages": [*Q1, {"role": "assistant", "content": "Paris."}],
                     "weight": pytest.approx(1 + (1.0 + 0.25) * 0.4)}]


def test_dedup_pools_support_and_min_support_filters(sqlite_fs):
    put(sqlite_fs, "a", Q1, "Paris.")
    put(sqlite_fs, "b", Q1, "Paris.")  # the same answer to the same chat, another exchange
    put(sqlite_fs, "c", Q2, "Madrid.")
    rate(sqlite_fs, "f1", "a", rating=1.0)
    rate(sqlite_fs, "f2", "b", rating=1.0)
    rate(sqlite_fs, "f3", "c", rating=1.0)
    result = export(sqlite_fs, "sft", min_support=2)
    assert [r["messages"][-1]["content"] for r in result.rows] == ["Paris."]
    assert result.rows[0]["weight"] == pytest.approx(3.0) and result.stats["below_min_support"] == 1


def test_rejected_answers_leave_sft_and_implicit_counts_less(sqlite_fs):
    put(sqlite_fs, "a", Q1, "Lyon.")
    put(sqlite_fs, "b", Q2, "Madrid.")
    rate(sqlite_fs, "f1", "a", rating=-1.0)
    rate(sqlite_fs, "f2", "b", source="implicit:regeneration", rating=-1.0)
    result = export(sqlite_fs, "sft", implicit_weight=0.5)
    assert [r["weight"] for r in result.rows] == [pytest.approx(0.5)] and result.stats["rejected_answers"] == 1


def test_dpo_from_a_correction_and_a_preference(sqlite_fs):
    put(sqlite_fs, "a", Q1, "Lyon.")
    put(sqlite_fs, "b", Q1, "Paris, of course.")
    put(sqlite_fs, "c", Q2, "Madrid.")
    rate(sqlite_fs, "f1", "a", correction="Paris.")
    rate(sqlite_fs, "f2", "b", other_id="a", other_choice=0)
    rate(sqlite_fs, "f3", "c", other_id="a", other_choice=0)  # another question: not a pair
    result = export(sqlite_fs, "dpo")
    pairs = {(r["chosen"], r["rejected"]) for r in result.rows}
    assert pairs == {("Paris.", "Lyon."), ("Paris, of course.", "Lyon.")}
    assert all(r["messages"] == Q1 for r in result.rows) and result.stats["skipped_preference"] == 1


def test_kto_labels_from_thumbs_and_corrections(sqlite_fs):
    put(sqlite_fs, "a", Q1, "Paris.")
    put(sqlite_fs, "b", Q2, "Lisbon.")
    rate(sqlite_fs, "f1", "a", rating=1.0)
    rate(sqlite_fs, "f2", "b", rating=-1.0, correction="Madrid.")
    got = {(r["completion"], r["label"]) for r in export(sqlite_fs, "kto").rows}
    assert got == {("Paris.", True), ("Lisbon.", False), ("Madrid.", True)}


def test_rows_are_what_the_trainers_accept(sqlite_fs, tmp_path: Path):
    put(sqlite_fs, "a", Q1, "Lyon.")
    put(sqlite_fs, "b", Q2, "Madrid.")
    rate(sqlite_fs, "f1", "a", rating=-0.5, correction="Paris.")
    rate(sqlite_fs, "f2", "b", rating=1.0)
    for fmt in ("sft", "dpo", "kto"):
        path = tmp_path / f"{fmt}.jsonl"
        assert write_jsonl(export(sqlite_fs, fmt).rows, path) > 0
        records = read_records(path, "auto")
        examples = examples_from_records(records) if fmt == "sft" else preference_examples(records, fmt)
        assert examples


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="format"):
        ExportOptions(format="rlhf")
    with pytest.raises(ConfigError, match="min-support"):
        ExportOptions(min_support=0)
