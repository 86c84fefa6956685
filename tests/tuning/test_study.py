"""Searches over a real tabular pipeline on Optuna: grid/random/bayes, MLflow child runs under one
parent, the best model registered, the report with plots, several workers on PostgreSQL covering a
grid exactly once, and a worker killed with SIGKILL mid-trial whose parameters run again exactly once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("lightgbm")
mlflow = pytest.importorskip("mlflow")

from optuna.trial import TrialState  # noqa: E402

from autoglm.training.loader import load_pipeline_file  # noqa: E402
from autoglm.tuning.space import grid_points, suggest  # noqa: E402
from autoglm.tuning.study import A_RETRY, A_STALE, _storage, tune  # noqa: E402


def make_table(path: Path, rows: int = 300, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.7, rows) > 0).astype(int)
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(path, index=False)


def write(folder: Path, search: str, name: str = "unit-search", extra: str = "") -> Path:
    make_table(folder / "t.csv")
    path = folder / "p.yaml"
    path.write_text(f"""\
name: {name}
data: {{train: t.csv, valid_fraction: 0.25}}
train:
  trainer: tabular
  target: y
  params: {{n_estimators: 10}}
  explain: false
{extra}evaluate: {{metrics: [auc]}}
search:
{search}""")
    return path


def test_conditional_space_and_grid_points(tmp_path):
    path = write(tmp_path, """\
  strategy: grid
  metric: test_auc
  params:
    train.estimator: {type: categorical, choices: [lightgbm, xgboost]}
    train.params.max_depth: {type: int, low: 2, high: 3, when: {train.estimator: xgboost}}
    train.params.n_estimators: {type: int, low: 5, high: 15, step: 5}
""")
    search = load_pipeline_file(path).search
    points = grid_points(search)
    assert len(points) == 3 + 3 * 2  # lightgbm x 3 sizes, xgboost x 2 depths x 3 sizes
    assert all(("train.params.max_depth" in p) == (p["train.estimator"] == "xgboost") for p in points)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        values = suggest(study.ask(), search)
        assert ("train.params.max_depth" in values) == (values["train.estimator"] == "xgboost")
        seen.add(values["train.estimator"])
    assert seen == {"lightgbm", "xgboost"}


def test_bayes_search_registers_the_best_and_writes_the_report(tmp_path, fresh_home):
    path = write(tmp_path, """\
  strategy: bayes
  metric: test_auc
  n_trials: 6
  pruner: {type: none}
  params:
    train.params.num_leaves: {type: int, low: 2, high: 16}
    train.params.learning_rate: {type: float, low: 0.01, high: 0.5, log: true}
""")
    result = tune(path, home=fresh_home, progress=False)
    assert result.n_complete == 6 and result.best_value == max(t["value"] for t in result.trials)
    assert result.registered["uri"] == "models:/unit-search@challenger"
    report = result.report_dir
    for name in ("report.md", "trials.csv", "optimization_history.png", "optimization_history.html",
                 "parallel_coordinate.png", "param_importances.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert f"test_auc = {result.best_value:.6g}" in text and "Parameter importance" in text

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{fresh_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("unit-search")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("autoglm.study") and "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 6
    best_child = client.get_model_version_by_alias("unit-search", "challenger").run_id
    assert best_child in {c.info.run_id for c in children}
    assert client.get_run(best_child).data.metrics["test_auc"] == pytest.approx(result.best_value)

    again = tune(path, home=fresh_home, progress=False)  # the budget is spent: no new trial, same best
    assert again.n_complete == 6 and again.best_value == result.best_value


def test_pruner_stops_bad_trials_on_the_per_fold_metric(tmp_path, fresh_home):
    path = write(tmp_path, """\
  strategy: random
  metric: cv_auc_mean
  n_trials: 10
  cv_folds: 3
  pruner: {type: median, startup_trials: 2}
  params:
    train.params.min_child_samples: {type: int, low: 2, high: 300, log: true}
""")
    result = tune(path, home=fresh_home, progress=False, register=False)
    # 150 rows per fold fit: a leaf needs min_child_samples of them, so large values cannot split at all
    hopeless = [t for t in result.trials[2:] if t["params"]["train.params.min_child_samples"] >= 150]
    assert hopeless and all(t["state"] == "PRUNED" for t in hopeless)
    assert all(t["state"] == "COMPLETE" for t in result.trials[:2])  # startup trials are never pruned


def _worker(path: Path, storage: str, study: str, home: Path) -> subprocess.Popen:
    """A worker the way another machine would start one."""
    env = {**os.environ, "AUTOGLM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "autoglm", "tune", str(path), "--worker", "--storage", storage,
                             "--study", study], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_four_workers_on_postgresql_cover_a_grid_exactly_once(tmp_path, fresh_home, pg_study_url):
    path = write(tmp_path, """\
  strategy: grid
  metric: test_auc
  params:
    train.params.num_leaves: {type: int, low: 2, high: 5}
    train.params.learning_rate: {type: categorical, choices: [0.05, 0.2]}
""", extra="tracking: {enabled: false}\n")  # the study storage is under test here, not MLflow
    result = tune(path, storage=pg_study_url, study_name="grid4", workers=4, home=fresh_home, progress=False)
    study = optuna.load_study(study_name="grid4", storage=_storage(pg_study_url))
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state.name, t.user_attrs) for t in trials]
    combos = sorted((t.params["train.params.num_leaves"], t.params["train.params.learning_rate"]) for t in trials)
    config = load_pipeline_file(path)
    assert combos == sorted((p["train.params.num_leaves"], p["train.params.learning_rate"])
                            for p in grid_points(config.search))
    # how many ran at once is the load-aware scheduler's call (2 CPU slots, fewer when the machine is busy);
    # every worker ran and exited 0 either way
    assert len({t.user_attrs["autoglm.pid"] for t in trials}) >= 1
    assert result.n_complete == 8 and result.registered is None  # nothing to register without tracking


def test_a_worker_killed_mid_trial_is_recovered_and_its_parameters_run_once(tmp_path, fresh_home):
    path = write(tmp_path, """\
  strategy: grid
  metric: cv_auc_mean
  cv_folds: 3
  pruner: {type: none}
  params:
    train.params.n_estimators: {type: categorical, choices: [600, 601]}
""", name="unit-kill", extra="tracking: {enabled: false}\n")
    make_table(tmp_path / "t.csv", rows=2000)  # a trial of a few seconds: long enough to be killed inside
    storage = str(tmp_path / "study.journal")
    config = load_pipeline_file(path)
    from autoglm.tuning.study import open_study

    study = open_study(config, storage, "kill")
    worker = _worker(path, storage, "kill", fresh_home)
    deadline = time.monotonic() + 120
    while not study.get_trials(states=(TrialState.RUNNING,)):
        assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read() if worker.poll() else "slow"
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    stale = study.get_trials(states=(TrialState.RUNNING,))
    assert len(stale) == 1

    result = tune(path, storage=storage, study_name="kill", home=fresh_home, progress=False, register=False)
    trials = optuna.load_study(study_name="kill", storage=_storage(storage)).get_trials()
    dead = [t for t in trials if t.number == stale[0].number][0]
    assert dead.state == TrialState.FAIL and dead.user_attrs[A_STALE]
    retries = [t for t in trials if t.user_attrs.get(A_RETRY) == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params
    live = [t for t in trials if not t.user_attrs.get(A_STALE)]
    assert sorted(t.params["train.params.n_estimators"] for t in live) == [600, 601]
    assert result.n_complete == 2


def test_a_trials_planned_memory_comes_from_the_planner_for_language_models(tmp_path, autoglm_home, monkeypatch):
    from autoglm.training.schema import PipelineConfig
    from autoglm.tuning.study import trial_memory

    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    tabular = load_pipeline_file(write(tmp_path, "  metric: test_auc\n  params:\n"
                                                 "    train.params.num_leaves: {type: int, low: 2, high: 4}\n"))
    assert trial_memory(tabular) == 512 * 1024**2
    lm = PipelineConfig.model_validate({"name": "lm", "data": {"train": "x.jsonl"},
                                        "train": {"trainer": "causal-lm", "model": "autoglm-demo"}})
    small = trial_memory(lm)
    bigger = trial_memory(lm.model_copy(update={"train": lm.train.model_copy(update={"model": "autoglm-demo-100m"})}))
    assert 0 < small < bigger  # a ~100M-parameter model plans more than the 7M demo


def test_optuna_dashboard_opens_the_study(tmp_path, fresh_home):
    import json
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard")
    path = write(tmp_path, """\
  strategy: random
  metric: test_auc
  n_trials: 3
  pruner: {type: none}
  params:
    train.params.num_leaves: {type: int, low: 2, high: 16}
""", extra="tracking: {enabled: false}\n")
    tune(path, home=fresh_home, progress=False, register=False)
    app = dashboard.wsgi(_storage(str(fresh_home / "studies" / "unit-search.journal")))  # the default storage
    status: list[str] = []
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/api/studies"
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200")
    studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
    assert "unit-search" in studies
