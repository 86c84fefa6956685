"""The pipeline around a real trainer (tabular LightGBM, fast): stages run once, re-runs do no work,
changed settings re-run only what depends on them, MLflow has the run, the register stage is idempotent,
drift between runs is caught, and the CLI prints one line per stage and one line per mistake."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightgbm")
pytest.importorskip("mlflow")

from autoglm.training.loader import load_pipeline_file  # noqa: E402
from autoglm.training.pipeline import pipeline_runs, run_pipeline  # noqa: E402


def make_table(path: Path, rows: int = 400, seed: int = 0, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    y = ((x1 + 0.5 * x2 + (colour == "red") + rng.normal(0, 0.5, rows)) > 0.5).astype(int)
    pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "y": y}).to_csv(path, index=False)
    return path


def write_pipeline(folder: Path, *, n_estimators: int = 20, register: bool = True, data: str = "t.csv") -> Path:
    text = f"""\
name: unit-tabular
seed: 0
data:
  train: {data}
  valid_fraction: 0.25
train:
  trainer: tabular
  target: y
  estimator: lightgbm
  params: {{n_estimators: {n_estimators}, num_leaves: 7}}
  guards:
    - type: drift
evaluate:
  metrics: [auc, accuracy]
"""
    if register:
        text += "register:\n  alias: challenger\n  when: \"test_auc > 0.5\"\n"
    path = folder / "p.yaml"
    path.write_text(text)
    return path


def test_run_rerun_change_and_register(tmp_path, fresh_home):
    import mlflow

    make_table(tmp_path / "t.csv")
    path = write_pipeline(tmp_path)
    first = run_pipeline(path, home=fresh_home, progress=False)
    assert [s for s in first.stages] == ["preprocess", "train", "evaluate", "register"]
    assert not any(s["cached"] for s in first.stages.values())
    assert 0.5 < first.metrics["test_auc"] <= 1.0
    assert first.registered["registered"] and first.registered["version"] == "1"

    client = mlflow.MlflowClient(tracking_uri=first.tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.params.n_estimators"] == "20"
    assert run.data.metrics["test_auc"] == pytest.approx(first.metrics["test_auc"])
    mv = client.get_model_version_by_alias("unit-tabular", "challenger")
    assert str(mv.version) == "1" and mv.run_id == first.mlflow_run_id

    # the same file again: nothing runs, no new MLflow run, the same version
    again = run_pipeline(path, home=fresh_home, progress=False)
    assert all(s["cached"] for n, s in again.stages.items() if n != "register")
    assert again.mlflow_run_id == first.mlflow_run_id and again.metrics == first.metrics
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # a training setting changes: preprocessing is reused, training and evaluation run again
    write_pipeline(tmp_path, n_estimators=40)
    changed = run_pipeline(path, home=fresh_home, progress=False)
    assert changed.stages["preprocess"]["cached"] and not changed.stages["train"]["cached"]
    assert changed.registered["version"] == "2"
    assert str(client.get_model_version_by_alias("unit-tabular", "challenger").version) == "2"
    assert changed.stages["preprocess"]["dir"] == first.stages["preprocess"]["dir"]

    # the data changes: everything runs; the drift guard compares against the previous run's profile
    make_table(tmp_path / "t.csv", seed=1, shift=2.0)
    drifted = run_pipeline(path, home=fresh_home, progress=False)
    assert not drifted.stages["preprocess"]["cached"]
    events = [e for e in drifted.events if e.kind == "guard" and e.source == "drift"]
    assert [e.action for e in events] == ["drift"] and "x1" in events[0].data["drifted"]
    assert "x2" not in events[0].data["drifted"].split(",")

    runs = pipeline_runs(fresh_home)
    assert len(runs) == 3 and {r["status"] for r in runs} == {"finished"}


def test_same_distribution_raises_no_drift(tmp_path, fresh_home):
    make_table(tmp_path / "t.csv", seed=0)
    path = write_pipeline(tmp_path, register=False)
    run_pipeline(path, home=fresh_home, progress=False, tracking=False)
    make_table(tmp_path / "t.csv", seed=7)  # new rows, same distribution
    result = run_pipeline(path, home=fresh_home, progress=False, tracking=False)
    events = [e for e in result.events if e.source == "drift"]
    assert [e.action for e in events] == ["no-drift"]


def test_register_refuses_when_the_gate_fails(tmp_path, fresh_home):
    make_table(tmp_path / "t.csv")
    path = write_pipeline(tmp_path)
    path.write_text(path.read_text().replace("test_auc > 0.5", "test_auc > 1.5"))
    result = run_pipeline(path, home=fresh_home, progress=False)
    assert result.registered == {"registered": False, "reason": f"test_auc = {result.metrics['test_auc']:.6g} not > 1.5"}


def cli(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOGLM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_cli_run_validate_status_and_errors(tmp_path, fresh_home):
    make_table(tmp_path / "t.csv")
    path = write_pipeline(tmp_path, register=False)
    ok = cli("pipeline", "validate", str(path), home=fresh_home)
    assert ok.returncode == 0 and "ok (unit-tabular: preprocess -> train -> evaluate" in ok.stdout

    run = cli("pipeline", "run", str(path), "--quiet", "--no-tracking", "--json", home=fresh_home)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0][1:] for ln in lines] == ["preprocess", "train", "evaluate"]
    assert json.loads(run.stdout)["metrics"]["test_auc"] > 0.5
    rerun = cli("pipeline", "run", str(path), "--quiet", "--no-tracking", home=fresh_home)
    assert [ln.split(":")[0] for ln in rerun.stderr.splitlines() if ln.startswith("[")] == [
        "[preprocess] cached", "[train] cached", "[evaluate] cached"]

    status = cli("pipeline", "status", home=fresh_home)
    assert status.returncode == 0 and "unit-tabular" in status.stdout and "finished" in status.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("target: y", "target: y\n  estimater: x"))
    out = cli("pipeline", "validate", str(bad), home=fresh_home)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "bad.yaml:9 train.estimater: unknown key 'estimater'; did you mean 'estimator'?" in out.stderr

    missing_col = tmp_path / "nocol.yaml"
    missing_col.write_text(path.read_text().replace("target: y", "target: label"))
    out = cli("pipeline", "run", str(missing_col), "--no-tracking", home=fresh_home)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "'label'" in out.stderr.strip().splitlines()[-1]


def test_validation_accepts_the_examples():
    root = Path(__file__).resolve().parents[2] / "examples" / "pipelines"
    names = {load_pipeline_file(p).name for p in root.glob("*.yaml")}
    assert {"demo-lora", "demo-full", "credit-tabular"} <= names
