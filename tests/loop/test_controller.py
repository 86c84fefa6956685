"""End to end on a small tabular pipeline (LightGBM, real MLflow registry in a fresh home, real SQLite
feedback store): a trigger fires, the pipeline trains and registers, the gate scores candidate and
champion on a held-out and a regression file, the champion alias moves only for a better model, a worse
one is refused with the reason on its run; promote/rollback by hand; a crash after training resumes
without training again."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")
pytest.importorskip("mlflow")

from autoglm.cli.main import main  # noqa: E402
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore  # noqa: E402
from autoglm.gateway.store import open_store  # noqa: E402
from autoglm.loop.controller import load_improve, run_loop_once  # noqa: E402
from autoglm.loop.state import LoopState  # noqa: E402

PIPELINE = """\
name: loop-credit
seed: 0
data:
  train: train.csv
  valid_fraction: 0.2
train:
  trainer: tabular
  target: y
  task: classification
  estimator: lightgbm
  params: {n_estimators: 25, num_leaves: 7, learning_rate: 0.1, verbose: -1}
  explain: false
evaluate:
  metrics: [auc]
register:
  alias: challenger
"""

IMPROVE = """\
improve:
  pipeline: pipeline.yaml
  model: loop-credit
  triggers:
    - type: feedback_count
      count: 3
  gate:
    metric: auc
    margin: 0.02
    holdout: holdout.csv
    regression: regression.csv
    regression_tolerance: 0.02
"""


def _table(n: int, seed: int, shuffle: bool = False) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + 0.7 * x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    if shuffle:
        y = rng.permutation(y)
    return "x1,x2,x3,y\n" + "".join(f"{a:.5f},{b:.5f},{c:.5f},{t}\n" for (a, b, c), t in zip(x, y))


@pytest.fixture()
def project(tmp_path, fresh_home):
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "improve.yaml").write_text(IMPROVE)
    (tmp_path / "holdout.csv").write_text(_table(300, 1))
    (tmp_path / "regression.csv").write_text(_table(300, 2))
    store = open_store(fresh_home / "state.db")
    yield tmp_path, fresh_home, FeedbackStore(store)
    store.close()


def _feedback(fs: FeedbackStore, n: int) -> None:
    for _ in range(n):
        rid = uuid.uuid4().hex
        fs.put_exchange(Exchange(rid, "k", "chat", "m", 1.0, 1, rid), json.dumps({"messages": [
            {"role": "user", "content": "hi"}]}), json.dumps({"choices": []}))
        fs.add_feedback(Feedback(uuid.uuid4().hex, rid, 0, "k", "explicit", rating=1.0,
                                 created_at=__import__("time").time()))


def _champion(home: Path) -> str | None:
    from autoglm.config import tracking_uri
    from autoglm.loop.promote import current_version, registry_client

    return current_version(registry_client(tracking_uri(home)), "loop-credit", "champion")


def _once(folder: Path, home: Path):
    cfg, base, _ = load_improve(folder / "improve.yaml")
    return run_loop_once(cfg, base_dir=base, home=home, store_url=str(home / "state.db"))


def test_fires_trains_gates_promotes_refuses_and_moves_by_hand(project, capsys):
    folder, home, fs = project
    (folder / "train.csv").write_text(_table(500, 10, shuffle=True))  # a weak first champion
    assert _once(folder, home).status == "quiet"  # no feedback yet: the trigger stays quiet

    _feedback(fs, 3)
    first = _once(folder, home)
    assert first.status == "promoted" and "no champion yet" in first.reason
    assert _champion(home) == first.cycle["candidate"]["version"] == "1"
    kinds = [(e.source, e.action) for e in first.events]
    assert kinds[:2] == [("trigger", "fired"), ("train", "trained")] and ("promote", "promoted") in kinds

    _feedback(fs, 3)
    (folder / "train.csv").write_text(_table(500, 11))  # real labels: clearly better
    better = _once(folder, home)
    assert better.status == "promoted", better.reason
    assert "better by" in better.reason and _champion(home) == "2"

    _feedback(fs, 3)
    (folder / "train.csv").write_text(_table(500, 12, shuffle=True))  # worse again
    worse = _once(folder, home)
    assert worse.status == "refused" and "worse by" in worse.reason
    assert _champion(home) == "2"  # kept
    from autoglm.config import tracking_uri
    from autoglm.loop.promote import registry_client

    tags = registry_client(tracking_uri(home)).get_run(worse.cycle["candidate"]["run_id"]).data.tags
    assert tags["autoglm.loop.decision"] == "refused" and "worse by" in tags["autoglm.loop.reason"]
    state = LoopState.load(home, "loop-credit")
    assert [c["phase"] for c in state["history"]] == ["promoted", "promoted", "refused"] and state["cycle"] is None

    # by hand, through the CLI: roll back to v1, promote v2 again, a missing version is one line + exit 2
    capsys.readouterr()
    assert main(["models", "rollback", "loop-credit"]) == 0
    assert "from version 2 to 1" in capsys.readouterr().out and _champion(home) == "1"
    assert main(["models", "promote", "loop-credit", "2"]) == 0 and _champion(home) == "2"
    assert main(["models", "promote", "loop-credit", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no version '9'" in err and "Traceback" not in err
    assert main(["loop", "status"]) == 0 and "3 cycles, 2 promotions" in capsys.readouterr().out


def test_a_crash_after_training_resumes_without_training_again(project, monkeypatch):
    folder, home, fs = project
    (folder / "train.csv").write_text(_table(500, 11))
    _feedback(fs, 3)
    from autoglm.loop import gate as gate_mod

    score = gate_mod.score_model

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(gate_mod, "score_model", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        _once(folder, home)
    state = LoopState.load(home, "loop-credit")
    assert state["cycle"]["phase"] == "trained" and state["cycle"]["candidate"]["train_cached"] is False
    monkeypatch.setattr(gate_mod, "score_model", score)

    resumed = _once(folder, home)
    assert resumed.status == "promoted" and resumed.cycle["candidate"]["train_cached"] is True
    assert ("cycle", "resumed") in [(e.source, e.action) for e in resumed.events]
    assert ("train", "cached") in [(e.source, e.action) for e in resumed.events]
    assert _champion(home) == "1"
    # the cycle is finished: no new feedback, nothing fires, nothing is promoted twice
    assert _once(folder, home).status == "quiet"
    assert len(LoopState.load(home, "loop-credit")["champions"]) == 1


def test_every_step_reaches_a_webhook_subscriber(project):
    from autoglm.registry import webhook_store
    from autoglm.registry.webhook_config import OutboundTarget
    from autoglm.registry.webhooks import WebhookSender

    folder, home, fs = project
    (folder / "train.csv").write_text(_table(500, 11))
    _feedback(fs, 3)
    sender = WebhookSender([OutboundTarget(name="ops", url="http://127.0.0.1:9/hook")], fs.store)
    cfg, base, _ = load_improve(folder / "improve.yaml")
    outcome = run_loop_once(cfg, base_dir=base, home=home, store_url=str(home / "state.db"),
                            subscribers=[sender.subscriber])
    assert outcome.status == "promoted"
    events = [d.event for d in webhook_store.list_deliveries(fs.store)]
    for name in ("loop.fired", "loop.trained", "loop.accepted", "loop.promoted"):
        assert name in events, events
    # the pipeline's own register (challenger) and the promotion (champion), in MLflow's vocabulary
    aliases = [json.loads(d.payload)["data"]["alias"] for d in webhook_store.list_deliveries(fs.store)
               if d.event == "model_version_alias.created"]
    assert sorted(aliases) == ["challenger", "champion"]


def test_export_splits_feedback_into_train_and_holdout(project):
    from autoglm.loop.controller import _export
    from autoglm.loop.schema import ExportConfig, ImproveConfig

    folder, home, fs = project
    for i in range(40):
        rid = uuid.uuid4().hex
        fs.put_exchange(Exchange(rid, "k", "chat", "m", 1.0, 1, rid), json.dumps({"messages": [
            {"role": "user", "content": f"question {i}"}]}), json.dumps({"choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}}]}))
        fs.add_feedback(Feedback(uuid.uuid4().hex, rid, 0, "k", "explicit", rating=1.0, created_at=1e9))
    cfg = ImproveConfig.model_validate({"pipeline": "p.yaml", "triggers": [{"type": "schedule", "every": 1}],
                                        "gate": {"metric": "eval_loss"},
                                        "export": ExportConfig(holdout_fraction=0.25).model_dump()})
    out = _export(cfg, fs, None, folder / "cycle")
    assert out["rows_train"] + out["rows_holdout"] == 40 and 3 <= out["rows_holdout"] <= 20
    train = [json.loads(x) for x in Path(out["train"]).read_text().splitlines()]
    held = [json.loads(x) for x in Path(out["holdout"]).read_text().splitlines()]
    assert train[0]["messages"][-1]["role"] == "assistant" and "weight" in train[0]
    assert not {json.dumps(r, sort_keys=True) for r in train} & {json.dumps(r, sort_keys=True) for r in held}
    assert _export(cfg, fs, None, folder / "again") == {**out, "train": str(folder / "again" / "train.jsonl"),
                                                          "holdout": str(folder / "again" / "holdout.jsonl")}
