"""The tabular trainer on the synthetic credit data: real LightGBM/XGBoost/scikit-learn models, real SHAP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoglm.errors import ConfigError
from autoglm.training.data import DataError
from autoglm.training.explain import AdditivityError, _check_additivity, contributions
from autoglm.training.schema import DataConfig, TabularConfig
from autoglm.training.trainers import StageContext, create_trainer
from autoglm.training.trainers.tabular import load_tabular_model

REPO = Path(__file__).resolve().parents[3]
CREDIT = REPO / "examples" / "data" / "credit.csv"
FAST = {"n_estimators": 30, "learning_rate": 0.1}


class Run:
    """One preprocess + train (+ evaluate) with everything the context received recorded."""

    def __init__(self, root: Path, data: DataConfig, seed: int = 0, **train):
        train.setdefault("params", dict(FAST))
        self.config = TabularConfig(trainer="tabular", **train)
        self.trainer = create_trainer("tabular", self.config, data)
        self.root, self.seed = root, seed
        self.prepared, self.train_dir = root / "prepared", root / "train"
        self.logged: list[tuple[int | None, dict[str, float]]] = []
        self.events: list = []

    def ctx(self, work_dir: Path) -> StageContext:
        return StageContext(work_dir=work_dir, seed=self.seed, progress=False, emit=self.events.append,
                            log_metrics=lambda m, step=None: self.logged.append((step, dict(m))))

    def preprocess(self) -> dict:
        return self.trainer.preprocess(self.ctx(self.prepared))

    def train(self) -> dict:
        return self.trainer.train(self.prepared, self.ctx(self.train_dir))

    def evaluate(self) -> dict:
        return self.trainer.evaluate(self.prepared, self.train_dir / "model", self.ctx(self.root / "eval"))

    def all(self) -> tuple[dict, dict, dict]:
        return self.preprocess(), self.train(), self.evaluate()


def credit(**kw) -> DataConfig:
    return DataConfig(train=str(CREDIT), valid_fraction=0.2, **kw)


def test_lightgbm_classification_learns_credit_risk(tmp_path):
    run = Run(tmp_path, credit(), target="default", weight_column="weight")
    summary, metrics, test = run.all()
    assert summary["task"] == "classification" and summary["classes"] == [0, 1]
    assert summary["rows_train"] + summary["rows_valid"] == 3000 and "weight" not in summary["features"]
    assert metrics["valid_auc"] > 0.72 and test["auc"] == pytest.approx(metrics["valid_auc"])  # test = valid here
    assert set(test) == {"auc", "f1", "accuracy", "log_loss", "precision", "recall"}
    assert all(isinstance(v, float) for v in test.values())
    # LightGBM's own evaluation on valid, once per boosting round, for the tuner's pruning
    steps = [s for s, m in run.logged if "valid_binary_logloss" in m]
    assert steps == list(range(1, 31))
    losses = [m["valid_binary_logloss"] for s, m in run.logged if "valid_binary_logloss" in m]
    assert losses[-1] < losses[0]

    model_dir = run.train_dir / "model"
    assert {"model.joblib", "model.json", "schema.json", "importance.json", "explanations.json"} <= {
        p.name for p in model_dir.iterdir()}
    info = json.loads((model_dir / "model.json").read_text())
    assert (info["trainer"], info["estimator"], info["task"], info["classes"]) == ("tabular", "lightgbm",
                                                                                  "classification", [0, 1])
    assert info["metrics"]["valid_auc"] == metrics["valid_auc"]

    model = load_tabular_model(model_dir)
    raw = pd.read_csv(CREDIT).head(50).drop(columns=["default"])
    proba = model.predict_proba(raw)
    assert proba.shape == (50, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(raw)) <= {0, 1}


def test_shap_adds_up_and_ranks_the_strongest_driver_first(tmp_path):
    run = Run(tmp_path, credit(), target="default", params={"n_estimators": 60, "learning_rate": 0.05})
    run.preprocess()
    run.train()
    model = load_tabular_model(run.train_dir / "model")
    importance = model.feature_importance()
    assert next(iter(importance)) == "late_payments"  # the generator's largest coefficient
    assert set(list(importance)[:3]) == {"late_payments", "debt_ratio", "income"}
    saved = json.loads((run.train_dir / "model" / "importance.json").read_text())
    assert saved["method"] == "lightgbm" and saved["max_additivity_error"] < 1e-6

    raw = pd.read_csv(CREDIT).iloc[100:110]
    c = contributions(model.estimator, model.encode(raw))
    margin = model.estimator.predict(model.encode(raw), raw_score=True)
    assert np.allclose(c.values[:, 0, :].sum(axis=1) + c.base[0], margin, atol=1e-8)
    reasons = model.explain(raw, top_k=3)
    assert len(reasons) == 10 and all(len(r["reasons"]) == 3 for r in reasons)
    first = reasons[0]["reasons"]
    assert abs(first[0]["contribution"]) >= abs(first[1]["contribution"]) >= abs(first[2]["contribution"])
    assert first[0]["value"] == _native(raw.iloc[0][first[0]["feature"]])

    with pytest.raises(AdditivityError, match="do not add up"):
        _check_additivity(c.values + 0.01, c.output - c.values.sum(axis=2), c.output, 1e-4, "test")


def _native(v):
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, float) and v.is_integer() else v


def test_regression_beats_predicting_the_mean(tmp_path):
    run = Run(tmp_path, credit(), target="loan_amount")
    summary, metrics, test = run.all()
    assert summary["task"] == "regression" and summary["classes"] is None
    train_mean = pd.read_parquet(run.prepared / "train.parquet")["loan_amount"].mean()
    y = pd.read_parquet(run.prepared / "test.parquet")["loan_amount"].to_numpy()
    baseline = float(np.sqrt(np.mean((y - train_mean) ** 2)))
    assert set(test) == {"rmse", "mae", "r2"}
    assert test["rmse"] < 0.7 * baseline and test["r2"] > 0.5
    reasons = load_tabular_model(run.train_dir / "model").explain(pd.read_csv(CREDIT).head(2))
    assert reasons[0]["explained"] is None and reasons[0]["space"] == "value"


@pytest.mark.parametrize("estimator,params,method", [
    ("xgboost", {"n_estimators": 30, "max_depth": 3}, "xgboost"),
    ("RandomForestClassifier", {"n_estimators": 15, "max_depth": 6}, "shap-tree"),
    ("sklearn.linear_model.LogisticRegression", {"max_iter": 1000}, "shap-linear"),
])
def test_other_estimators_by_name(tmp_path, estimator, params, method):
    run = Run(tmp_path, credit(), target="default", estimator=estimator, params=params)
    _, metrics, test = run.all()
    assert metrics["valid_auc"] > 0.7 and test["auc"] > 0.7
    saved = json.loads((run.train_dir / "model" / "importance.json").read_text())
    assert saved["method"] == method and saved["max_additivity_error"] < 1e-4
    if estimator == "xgboost":
        assert [s for s, m in run.logged if "valid_logloss" in m] == list(range(1, 31))


def test_unknown_estimator_and_bad_params_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown estimator 'RandomForestClasifier'; did you mean "
                                          r"RandomForestClassifier.*Choices: lightgbm, xgboost"):
        run = Run(tmp_path / "a", credit(), target="default", estimator="RandomForestClasifier")
        run.preprocess()
        run.train()
    with pytest.raises(ConfigError, match=r"lightgbm has no parameter 'num_leafs' \(did you mean .*num_leaves"):
        run = Run(tmp_path / "b", credit(), target="default", params={"num_leafs": 8})
        run.preprocess()
        run.train()
    with pytest.raises(ConfigError, match=r"xgboost does not know the parameter\(s\) \{ \"colour\" \}"):
        run = Run(tmp_path / "c", credit(), target="default", estimator="xgboost", params={"n_estimators": 2,
                                                                                          "colour": 1})
        run.preprocess()
        run.train()
    with pytest.raises(ConfigError, match="RandomForestRegressor is not a classifier"):
        run = Run(tmp_path / "d", credit(), target="default", estimator="RandomForestRegressor")
        run.preprocess()
        run.train()
    assert not (tmp_path / "d" / "train" / "model").exists()


def test_cross_validation_logs_each_fold(tmp_path):
    run = Run(tmp_path, credit(), target="default", cv_folds=3)
    run.preprocess()
    metrics = run.train()
    folds = [(s, m) for s, m in run.logged if "cv_auc" in m]
    assert [s for s, _ in folds] == [1, 2, 3]
    aucs = np.array([m["cv_auc"] for _, m in folds])
    assert metrics["cv_auc_mean"] == pytest.approx(aucs.mean()) and metrics["cv_auc_std"] == pytest.approx(aucs.std())
    assert len(set(aucs)) == 3 and all(a > 0.7 for a in aucs)
    saved = [json.loads((run.train_dir / "checkpoints" / f"fold-{k}.json").read_text()) for k in (1, 2, 3)]
    assert [s["metrics"]["auc"] for s in saved] == aucs.tolist()


def test_sample_weights_change_the_model(tmp_path):
    frame = pd.read_csv(CREDIT)
    frame["weight"] = np.where(frame["default"] == 1, 0.02, 1.0)  # defaults almost do not count
    path = tmp_path / "weighted.csv"
    frame.to_csv(path, index=False)
    data = DataConfig(train=str(path), valid_fraction=0.2)
    weighted = Run(tmp_path / "w", data, target="default", weight_column="weight")
    plain = Run(tmp_path / "p", data, target="default", features=[c for c in frame.columns
                                                                  if c not in ("default", "weight")])
    for run in (weighted, plain):
        run.preprocess()
        run.train()
    rows = frame.head(300)
    p_weighted = load_tabular_model(weighted.train_dir / "model").predict_proba(rows)[:, 1].mean()
    p_plain = load_tabular_model(plain.train_dir / "model").predict_proba(rows)[:, 1].mean()
    assert p_plain > 0.15 and p_weighted < 0.5 * p_plain


def test_two_runs_give_identical_metrics(tmp_path):
    results = []
    for name in ("a", "b"):
        run = Run(tmp_path / name, credit(), target="default", cv_folds=2, weight_column="weight",
                  params={"n_estimators": 20, "subsample": 0.7, "subsample_freq": 1, "colsample_bytree": 0.7})
        _, metrics, test = run.all()
        results.append((metrics, test))
    assert results[0] == results[1]
    other = Run(tmp_path / "c", credit(), seed=1, target="default", cv_folds=2, weight_column="weight",
                params={"n_estimators": 20, "subsample": 0.7, "subsample_freq": 1, "colsample_bytree": 0.7})
    assert other.all()[1] != results[0][0]  # the seed matters (split, folds and bagging)


_CRASHING_TRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from autoglm.training.schema import DataConfig, TabularConfig
    from autoglm.training.trainers import StageContext, create_trainer

    root = Path(sys.argv[1])
    config = TabularConfig.model_validate_json(Path(sys.argv[2]).read_text())
    trainer = create_trainer("tabular", config, DataConfig(train=sys.argv[3], valid_fraction=0.2))

    def log_metrics(metrics, step=None):
        if "cv_auc" in metrics and step == 1:
            time.sleep(120)  # hold here after fold 1 was recorded so the test can kill -9 us

    trainer.train(root / "prepared", StageContext(work_dir=root / "train", progress=False, log_metrics=log_metrics))
""")


def test_resume_after_kill_9_ends_with_the_uninterrupted_metrics(tmp_path):
    kw = dict(target="default", cv_folds=3, weight_column="weight")
    clean = Run(tmp_path / "clean", credit(), **kw)
    clean.preprocess()
    expected = clean.train()

    crashed = Run(tmp_path / "crashed", credit(), **kw)
    crashed.preprocess()
    config_file = tmp_path / "config.json"
    config_file.write_text(crashed.config.model_dump_json())
    script = tmp_path / "crash.py"
    script.write_text(_CRASHING_TRAIN)
    proc = subprocess.Popen([sys.executable, str(script), str(crashed.root), str(config_file), str(CREDIT)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fold1 = crashed.train_dir / "checkpoints" / "fold-1.json"
    try:
        deadline = time.monotonic() + 60
        while not fold1.exists():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "fold 1 never finished"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed.train_dir / "checkpoints" / "fold-2.json").exists()
    assert not (crashed.train_dir / "model").exists()
    written = fold1.stat().st_mtime_ns

    resumed = crashed.train()
    assert resumed == expected
    assert [e.step for e in crashed.events if e.action == "fold-resumed"] == [1]  # only fold 1 was reused
    assert fold1.stat().st_mtime_ns == written


def _write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


@pytest.mark.parametrize("case,train_text,valid_text,config,expect", [
    ("missing target", "a,b\n1,2\n3,4\n", None, {}, r"train\.csv: column 'y' is missing; columns are: a, b"),
    ("missing feature in valid", "a,b,y\n1,x,0\n2,y,1\n", "a,y\n1,0\n", {},
     r"valid\.csv: column 'b' is missing; columns are: a, y"),
    ("typo in a numeric column", "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)).replace("13,1", "1e,1"),
     None, {}, r"train\.csv:15 column 'a': expected a number; got '1e'"),
    ("text in valid's numeric column", "a,y\n1,0\n2,1\n3,0\n", "a,y\n1,0\nabc,1\n", {},
     r"valid\.csv:3 column 'a': expected a number; got 'abc'"),
    ("unknown label", "a,y\n1,0\n2,1\n3,0\n", "a,y\n1,0\n2,1\n3,maybe\n", {"task": "classification"},
     r"valid\.csv:4 column 'y': unknown label 'maybe'; labels seen in training: 0, 1"),
    ("negative weight", "a,w,y\n1,1,0\n2,-1,1\n3,1,0\n", None, {"weight_column": "w"},
     r"train\.csv:3 column 'w': must be at least 0; got -1"),
    ("empty label", "a,y\n1,0\n2,\n3,1\n", None, {}, r"train\.csv:3 column 'y': is empty"),
    ("empty file", "", None, {}, r"train\.csv: has no rows"),
])
def test_bad_data_fails_in_preprocess_before_anything_is_written(tmp_path, case, train_text, valid_text, config,
                                                                 expect):
    train = _write(tmp_path / "train.csv", train_text)
    valid = _write(tmp_path / "valid.csv", valid_text) if valid_text is not None else None
    run = Run(tmp_path, DataConfig(train=train, valid=valid), target="y", **config)
    with pytest.raises(DataError, match=expect):
        run.preprocess()
    assert not run.prepared.exists() or not any(run.prepared.iterdir())


def test_text_labels_and_categories_round_trip(tmp_path):
    frame = pd.read_csv(CREDIT).head(1200)
    frame["default"] = frame["default"].map({0: "repaid", 1: "defaulted"})
    path = tmp_path / "labels.jsonl"
    frame.to_json(path, orient="records", lines=True)
    run = Run(tmp_path, DataConfig(train=str(path), valid_fraction=0.25), target="default",
              params={"n_estimators": 20, "min_child_samples": 5})
    summary = run.preprocess()
    assert summary["classes"] == ["defaulted", "repaid"] and summary["rows_valid"] == 300
    schema = json.loads((run.prepared / "schema.json").read_text())
    kinds = {f["name"]: f for f in schema["features"]}
    assert kinds["employment"]["kind"] == "categorical" and kinds["age"]["kind"] == "numeric"
    assert kinds["employment"]["categories"] == ["retired", "salaried", "self_employed", "unemployed"]
    run.train()
    model = load_tabular_model(run.train_dir / "model")
    rows = frame.head(5).copy()
    rows.loc[rows.index[0], "employment"] = "astronaut"  # unseen category: treated as missing
    assert set(model.predict(rows)) <= {"defaulted", "repaid"}
    explained = model.explain(rows, top_k=2)
    assert explained[0]["explained"] == "repaid"  # the positive class of a binary model is classes[1]


def test_multiclass_explains_the_predicted_class(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 3))
    label = np.select([x[:, 0] < -0.5, x[:, 0] > 0.5], ["low", "high"], "mid")
    path = tmp_path / "three.parquet"
    pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": label}).to_parquet(path)
    run = Run(tmp_path, DataConfig(train=str(path), valid_fraction=0.25), target="y",
              params={"n_estimators": 20, "min_child_samples": 5})
    _, metrics, test = run.all()
    assert test["auc"] > 0.9 and metrics["valid_accuracy"] > 0.8
    model = load_tabular_model(run.train_dir / "model")
    rows = pd.DataFrame({"x0": [-2.0, 0.0, 2.0], "x1": [0.0] * 3, "x2": [0.0] * 3})
    explained = model.explain(rows, top_k=1)
    assert [e["prediction"] for e in explained] == ["low", "mid", "high"]
    assert [e["explained"] for e in explained] == ["low", "mid", "high"]
    assert all(e["reasons"][0]["feature"] == "x0" for e in explained)
    assert next(iter(model.feature_importance())) == "x0"


def test_drift_data_is_the_train_features_with_categories_as_text(tmp_path):
    run = Run(tmp_path, credit(), target="default", weight_column="weight")
    summary = run.preprocess()
    current = run.trainer.drift_data(run.prepared)
    assert list(current.columns) == summary["features"] and len(current) == summary["rows_train"]
    raw = pd.read_csv(CREDIT)
    assert set(current["employment"]) == set(raw["employment"])
    assert current["income"].between(raw["income"].min(), raw["income"].max()).all()
