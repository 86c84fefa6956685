"""Quality per (model, task) in the state store, learned from feedback and pipeline evaluations.

The condition is created for real: exchanges and ratings are written through the feedback store on
the same SQLite / PostgreSQL database the gateway uses, and a pipeline is run; then ``auto`` routes
differently - and does not without such feedback.
"""
from __future__ import annotations

import secrets
import time

import pytest

from autoglm.deploy.schema import DeployConfig
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore
from autoglm.gateway.store import open_store
from autoglm.recommend.learn import QualitySync
from autoglm.recommend.quality import Observation, QualityBook, QualityStore
from autoglm.recommend.recommender import build_recommender

CODE = "Write a Python function that merges two sorted lists"


def deploy(url: str, **quality) -> DeployConfig:
    return DeployConfig.model_validate({
        "models": [
            {"name": "coder", "source": "autoglm-demo", "profile": {"tasks": {"code": 0.9, "chat": 0.4}}},
            {"name": "general", "source": "autoglm-demo",
             "profile": {"tasks": {"chat": 0.8, "code": 0.5}, "cost": 0.5}},
        ],
        "recommend": {"default": "general", "quality": quality},
        "gateway": {"state_store": url},
    })


def chat(text: str, model: str = "auto") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def rate(fs: FeedbackStore, request: dict, served_by: str, rating: float, source: str = "explicit") -> None:
    """A captured exchange and a rating of it, as capture and POST /v1/feedback store them."""
    rid = f"chatcmpl-{secrets.token_hex(6)}"
    now = time.time()
    with fs.store.transaction():
        fs.put_exchange(Exchange(rid, "key-1", "chat", served_by, now, 1, "h"), _json(request),
                        _json({"id": rid, "model": served_by}))
        fs.add_feedback(Feedback(f"fb-{secrets.token_hex(6)}", rid, 0, "key-1", source, rating, created_at=now))


def _json(obj: dict) -> str:
    import json

    return json.dumps(obj)


def test_observations_are_counted_once_and_evaluations_replace(store_url):
    store = QualityStore(open_store(store_url, migrate=False))
    assert store.migrate() == [] and QualityStore(store.store).migrate() == []  # idempotent
    assert store.add(Observation("coder", "code", 0.2, 1.0, "feedback", id="feedback:fb-1"))
    assert not store.add(Observation("coder", "code", 0.2, 1.0, "feedback", id="feedback:fb-1"))  # a replay
    ev = {"id": "evaluation:p:test_auc:coder:code", "source": "evaluation"}
    assert store.add(Observation("coder", "code", 0.6, 20.0, ref="run-1", **ev), replace=True)
    assert not store.add(Observation("coder", "code", 0.6, 20.0, ref="run-1", **ev), replace=True)  # same run
    assert store.add(Observation("coder", "code", 0.8, 20.0, ref="run-2", **ev), replace=True)  # newer run
    entry = store.aggregates()[("coder", "code")]
    assert entry.count == 2 and entry.weight == pytest.approx(21.0)
    assert entry.by_source["evaluation"] == {"n": 20.0, "mean": 0.8, "count": 1}
    assert entry.mean == pytest.approx((0.2 + 20 * 0.8) / 21)
    store.set_cursor("feedback", 12.5)
    assert store.cursor("feedback") == 12.5 and store.cursor("other") is None
    with pytest.raises(ValueError):
        Observation("coder", "code", 0.5, 0.0)
    store.close()


def test_bad_ratings_for_a_model_on_a_task_move_auto_to_the_other_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    rec = build_recommender(deploy(url))
    sync = QualitySync(rec, rec.quality, rec.quality_config)
    fs = FeedbackStore(open_store(url))
    assert rec.decide(chat(CODE)).model == "coder"

    # no change without such feedback: praise, ratings of requests that named a model, no rating at all
    for _ in range(6):
        rate(fs, chat(CODE), "coder", 1.0)
        rate(fs, chat(CODE, model="coder"), "coder", -1.0)  # not routed by auto: not about routing
        rate(fs, chat("qwzx vbnm plkj"), "general", -1.0)  # unknown task: teaches nothing
    report = sync.run_once()
    assert (report.feedback, report.skipped) == (6, 12)
    d = rec.decide(chat(CODE))
    assert d.model == "coder" and d.scores["coder"] > 0.9 - 0.1  # praise only raised it
    assert sync.run_once().feedback == 0  # the same rows again (the overlap): counted once

    for _ in range(10):  # now the condition: thumbs down on coder's code answers routed by auto
        rate(fs, chat(CODE), "coder", -1.0)
    assert sync.run_once().feedback == 10
    d = rec.decide(chat(CODE))
    assert (d.task, d.model, d.runner_up) == ("code", "general", "coder"), d.scores
    entry = rec.quality.entry("coder", "code")
    assert entry.count == 16 and entry.by_source["feedback"]["mean"] == pytest.approx(6 / 16)

    # another process (a replica, a restart) sees the same table
    other = build_recommender(deploy(url))
    assert other.decide(chat(CODE)).model == "coder"  # before its first refresh: the profiles
    other.quality.refresh()
    assert other.decide(chat(CODE)).model == "general"
    rec.quality.close(), other.quality.close(), fs.store.close()


def test_implicit_signals_count_less_and_can_be_turned_off(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    fs = FeedbackStore(open_store(url))
    for _ in range(4):
        rate(fs, chat(CODE), "coder", -1.0, source="implicit:regeneration")
    rec = build_recommender(deploy(url, implicit_weight=0.25))
    QualitySync(rec, rec.quality, rec.quality_config).run_once()
    assert rec.quality.entry("coder", "code").weight == pytest.approx(1.0)
    off = build_recommender(deploy(f"sqlite:///{tmp_path / 'other.db'}", feedback=False))
    assert QualitySync(off, off.quality, off.quality_config).run_once().feedback == 0
    rec.quality.close(), off.quality.close(), fs.store.close()


PIPELINE = """
name: extractor-eval
seed: 0
data:
  train: {data}
  valid_fraction: 0.2
train:
  trainer: tabular
  target: default
  task: classification
  estimator: lightgbm
  params: {{n_estimators: 20, num_leaves: 7}}
evaluate:
  metrics: [auc]
tracking:
  enabled: false
"""


def test_a_pipeline_evaluation_sets_the_quality_of_its_model_and_task(tmp_path):
    from pathlib import Path

    from autoglm.training.pipeline import run_pipeline

    data = Path(__file__).parents[2] / "examples" / "data" / "credit.csv"
    path = tmp_path / "eval.yaml"
    path.write_text(PIPELINE.format(data=data))
    home = tmp_path / "home"
    result = run_pipeline(path, home=home, progress=False, tracking=False)
    auc = result.metrics["test_auc"]
    url = f"sqlite:///{tmp_path / 'state.db'}"
    assert auc > 0.6  # the toy credit data is learnable
    link = {"pipeline": "extractor-eval", "model": "general", "task": "code", "metric": "test_auc",
            "scale": [0.5, 0.6]}  # any AUC above 0.6 is a perfect score here
    rec = build_recommender(deploy(url, evaluations=[link], evaluation_weight=50))
    assert rec.decide(chat(CODE)).model == "coder"
    sync = QualitySync(rec, rec.quality, rec.quality_config, home=home)
    assert sync.run_once().evaluations == 1
    entry = rec.quality.entry("general", "code")
    assert entry.by_source["evaluation"] == {"n": 50.0, "mean": 1.0, "count": 1}
    assert sync.run_once().evaluations == 0  # the same run is not counted again
    # (5 * 0.5 + 50 * 1) / 55 = 0.95 for general beats coder's prior 0.9 (minus cost): auto follows
    assert rec.decide(chat(CODE)).model == "general"
    rec.quality.close()


def test_evaluation_links_are_checked_against_the_file():
    from autoglm.errors import ConfigError

    link = {"pipeline": "p", "model": "nobody", "task": "code", "metric": "test_auc"}
    with pytest.raises(ConfigError, match=r"recommend.quality.evaluations\[0\].model: 'nobody'"):
        build_recommender(deploy("sqlite:///unused.db", evaluations=[link]))
    with pytest.raises(ConfigError, match="unknown task 'poetry'"):
        build_recommender(deploy("sqlite:///unused.db", evaluations=[{**link, "model": "coder", "task": "poetry"}]))
    with pytest.raises(ValueError, match="high > low"):
        deploy("x", evaluations=[{**link, "scale": [1, 0]}])


def test_book_reads_only_its_snapshot_on_the_request_path(tmp_path):
    book = QualityBook(tmp_path / "state.db")
    from autoglm.recommend.profiles import ModelProfile

    p = ModelProfile("coder", {"code": 0.9})
    book.store.add(Observation("coder", "code", 0.0, 5.0))
    assert book.quality(p, "code") == pytest.approx(0.9)  # not refreshed yet
    book.refresh()
    assert book.quality(p, "code") == pytest.approx(0.45)
    rows = book.table({"coder": p}, ["code", "chat"])
    assert rows == [{"model": "coder", "task": "code", "prior": 0.9, "quality": 0.45, "n": 5.0, "mean": 0.0,
                     "observations": 1, "sources": {"manual": {"n": 5.0, "mean": 0.0, "count": 1}},
                     "updated_at": rows[0]["updated_at"]}]
    book.close()
