"""``autoglm pipeline compile FILE --to pytorchjob|tune-job``: the objects validate, and the commands the pods
run do what the operator's environment asks of them (torchrun ranks; index 0 coordinates the study)."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm.deploy.kubernetes.jobs import pytorch_job, tune_job
from autoglm.deploy.kubernetes.validate import load_docs, validate_objects
from autoglm.errors import ConfigError
from autoglm.training.loader import parse_pipeline_text

from .conftest import EXAMPLES, autoglm

LORA = EXAMPLES / "pipelines" / "demo-lora.yaml"
SEARCH = EXAMPLES / "pipelines" / "credit-search.yaml"


def _fake_autoglm(tmp_path: Path, body: str) -> dict:
    """A PATH whose `autoglm` is a small script (the pods' command, observed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "autoglm"
    exe.write_text(f"#!{sys.executable}\n{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_pytorchjob_cli_writes_a_valid_job(tmp_path):
    out = tmp_path / "job.yaml"
    r = autoglm("pipeline", "compile", str(LORA), "--to", "pytorchjob", "--nodes", "3", "--nproc", "2",
                "--device", "cuda", "-o", str(out), "--tracking-uri", "http://mlflow:5000")
    assert r.returncode == 0, r.stderr
    assert "/data/data/chat.jsonl" in r.stdout  # where the pods read the data
    docs = load_docs(out.read_text())
    assert validate_objects(docs) == []
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert job["spec"]["nprocPerNode"] == "2"
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    c = specs["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["image"] == "autoglm:cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in c["env"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "pipeline")
    assert c["args"][-2] == mount["mountPath"] == "/data/work/demo-lora.yaml"
    # the mounted file is the pipeline, and its data resolves under the shared volume
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_pipeline_text(cm["data"][mount["subPath"]], "cm", base_dir="/data/work")
    assert str(config.data.resolve(config.data.train)) == "/data/work/../data/chat.jsonl"
    assert any(d["kind"] == "PersistentVolumeClaim" and d["spec"]["accessModes"] == ["ReadWriteMany"] for d in docs)


def test_torchrun_takes_its_topology_from_the_operators_variables(tmp_path):
    """Run the pod's exact command with the PET_* variables the training operator sets for node 0 of 1."""
    job = next(o for o in pytorch_job(LORA, nodes=1, nproc=2).objects if o["kind"] == "PyTorchJob")
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    seen = tmp_path / "ranks"
    seen.mkdir()
    env = _fake_autoglm(tmp_path, "import os, sys\n"
                                  f"open(os.path.join({str(seen)!r}, os.environ['RANK']), 'w').write("
                                  "os.environ['WORLD_SIZE'] + ' ' + ' '.join(sys.argv[1:]))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(PET_NNODES="1", PET_NODE_RANK="0", PET_NPROC_PER_NODE=job["spec"]["nprocPerNode"],
               PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port))
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), *c["args"]], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = {p.name: p.read_text() for p in seen.iterdir()}
    assert sorted(ranks) == ["0", "1"]
    assert all(v == "2 pipeline run /data/work/demo-lora.yaml --quiet" for v in ranks.values())


def test_tune_job_shares_one_study_and_index_zero_coordinates(tmp_path):
    compiled = tune_job(SEARCH, workers=3)
    assert validate_objects(compiled.objects) == []
    job = next(o for o in compiled.objects if o["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    c = job["spec"]["template"]["spec"]["containers"][0]
    storage = next(e for e in c["env"] if e["name"] == "AUTOGLM_OPTUNA_STORAGE")
    assert storage["valueFrom"]["secretKeyRef"] == {"name": "autoglm-secrets", "key": "optuna-storage"}
    env = _fake_autoglm(tmp_path, "import sys\nprint(' '.join(sys.argv[1:]))\n")
    env["AUTOGLM_OPTUNA_STORAGE"] = "postgresql://u@db/optuna"
    lines = {}
    for index in ("0", "1", "2"):
        r = subprocess.run(c["command"], env={**env, "JOB_COMPLETION_INDEX": index}, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        lines[index] = r.stdout.strip()
    base = "tune /data/work/credit-search.yaml --storage postgresql://u@db/optuna --study credit-search"
    assert lines == {"0": base + " --quiet", "1": base + " --worker", "2": base + " --worker"}


def test_jobs_refuse_files_they_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="has no search: block"):
        tune_job(LORA)
    with pytest.raises(ConfigError, match="causal-lm"):
        pytorch_job(EXAMPLES / "pipelines" / "credit-tabular.yaml")
    r = autoglm("pipeline", "compile", str(LORA), "--to", "pytorchjob", "--nodes", "0", "-o", str(tmp_path / "x.yaml"))
    assert r.returncode != 0 and "--nodes must be at least 1" in r.stderr and "Traceback" not in r.stderr
