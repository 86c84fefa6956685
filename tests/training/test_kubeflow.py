"""`autoglm pipeline compile FILE --to kubeflow`: the package loads with the kfp SDK and runs under
kfp.local (SubprocessRunner, no Docker): every stage in its own subprocess, stages passed on as artifacts."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from autoglm.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # kfp.local on our image name
kfp = pytest.importorskip("kfp", reason='kfp is the kubeflow extra: pip install -c constraints.txt -e ".[kubeflow]"')

CREDIT = Path(__file__).resolve().parents[2] / "examples" / "data" / "credit.csv"

PIPELINE = """\
name: tiny-credit
seed: 0
data:
  train: credit.csv
  valid_fraction: 0.25
train:
  trainer: tabular
  target: default
  task: classification
  estimator: lightgbm
  params: {n_estimators: 20, num_leaves: 7, verbose: -1}
  cv_folds: 2
  explain: false
evaluate:
  metrics: [auc, accuracy]
register:
  alias: challenger
"""


@pytest.fixture()
def pipeline_file(tmp_path) -> Path:
    rows = CREDIT.read_text().splitlines()[:301]  # header + 300 rows: seconds, not minutes
    (tmp_path / "credit.csv").write_text("\n".join(rows) + "\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(PIPELINE)
    return path


def _compile(path: Path, out: Path, *extra: str) -> int:
    from autoglm.cli import pipeline_compile

    parser = argparse.ArgumentParser()
    pipeline_compile.add_arguments(parser)
    return pipeline_compile.run(parser.parse_args([str(path), "--to", "kubeflow", "-o", str(out), *extra]))


def test_compiled_package_runs_every_stage_under_kfp_local(pipeline_file, tmp_path, fresh_home, capsys):
    from kfp import components, local

    out = tmp_path / "tiny.kubeflow.yaml"
    db = tmp_path / "mlflow.db"
    assert _compile(pipeline_file, out, "--tracking-uri", f"sqlite:///{db}") == 0
    assert "preprocess -> train -> evaluate -> register" in capsys.readouterr().out

    spec = next(d for d in __import__("yaml").safe_load_all(out.read_text()) if "root" in d)
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == ["autoglm-evaluate", "autoglm-preprocess", "autoglm-register", "autoglm-train"]
    assert tasks["autoglm-register"]["dependentTasks"] == ["autoglm-evaluate", "autoglm-preprocess", "autoglm-train"]
    assert all(t["cachingOptions"] == {} for t in tasks.values())  # KFP's own cache is off
    assert spec["root"]["inputDefinitions"]["parameters"]["base_dir"]["defaultValue"] == str(tmp_path)

    loaded = components.load_component_from_file(str(out))  # the package as the SDK reads it
    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    result = json.loads(loaded().output)
    assert result["stage"] == "register" and result["summary"]["registered"] is True
    assert result["summary"]["uri"] == "models:/tiny-credit@challenger"

    # Each task's artifact holds exactly its own finished stage; the upstream ones were linked, not copied.
    (run_dir,) = root.iterdir()
    held = {t.name: sorted(p.name for p in (t / "stage_dir" / "pipelines" / "tiny-credit" / "stages").iterdir()
                           if not p.name.startswith("."))
            for t in run_dir.iterdir() if (t / "stage_dir").is_dir()}
    assert {k: [n.split("-")[0] for n in v] for k, v in held.items()} == {
        "autoglm-preprocess": ["preprocess"], "autoglm-train": ["train"],
        "autoglm-evaluate": ["evaluate"], "autoglm-register": ["register"]}
    executed = json.loads((run_dir / "autoglm-evaluate" / "executor_output.json").read_text())
    metrics = executed["artifacts"]["metrics"]["artifacts"][0]["metadata"]  # the task's KFP metrics
    assert 0.5 < metrics["test_auc"] <= 1.0 and set(metrics) == {"test_auc", "test_accuracy"}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    version = client.get_model_version_by_alias("tiny-credit", "challenger")
    assert str(version.version) == "1" and "autoglm-preprocess/stage_dir/mlartifacts" in version.source
    runs = client.search_runs([client.get_experiment_by_name("tiny-credit").experiment_id])
    assert len(runs) == 4 and len({r.data.tags["autoglm.kubeflow_run"] for r in runs}) == 1  # one job, grouped


def test_register_without_a_shared_tracking_store_is_refused(pipeline_file, tmp_path):
    with pytest.raises(ConfigError, match="--tracking-uri"):
        _compile(pipeline_file, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_untracked_pipeline_without_register_compiles(pipeline_file, tmp_path, capsys):
    pipeline_file.write_text(PIPELINE.split("register:")[0])
    assert _compile(pipeline_file, tmp_path / "x.yaml") == 0
    assert "preprocess -> train -> evaluate; image autoglm:cpu; untracked" in capsys.readouterr().out


def test_a_mistake_is_file_line_key(pipeline_file, tmp_path):
    pipeline_file.write_text(PIPELINE.replace("estimator:", "estimater:"))
    with pytest.raises(ConfigError, match=r"tiny\.yaml:\d+ train\.estimater: .*did you mean 'estimator'"):
        _compile(pipeline_file, tmp_path / "x.yaml")


def test_without_kfp_the_message_names_the_extra(pipeline_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kfp", None)  # as if kfp were not installed
    with pytest.raises(ConfigError, match=r'\.\[kubeflow\]'):
        _compile(pipeline_file, tmp_path / "x.yaml", "--tracking-uri", "http://mlflow:5000")
