"""``POST /admin/runs/{id}/resume`` against a real ``autoglm serve``: a run of the (light) tabular example
started through the API, then left as a crash leaves it (its last stage gone, its record ``running``
under a dead process), resumes under the same run id: the finished stages are found by their keys and
kept, the missing one runs again. A finished run is a 409, an unknown one a 404, no key a 401, and
settings that no longer give the same run (its data changed) a 409 with nothing started.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, start_live_server

pytest.importorskip("lightgbm")

ROOT = Path(__file__).resolve().parents[2]
TABULAR = ROOT / "examples" / "pipelines" / "credit-tabular.yaml"
ADMIN = "admin-key-for-the-resume-tests"
AUTH = {"authorization": f"Bearer {ADMIN}"}


def light_tabular(folder: Path) -> Path:
    """The tabular example, lighter (3 folds, 40 trees, no SHAP), its data copied beside it: relative paths."""
    text = TABULAR.read_text()
    for old, new in (("../data/credit.csv", "data/credit.csv"), ("n_estimators: 200", "n_estimators: 40"),
                     ("cv_folds: 5", "cv_folds: 3"), ("explain: true", "explain: false")):
        assert old in text, old
        text = text.replace(old, new)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "credit.csv").write_bytes((ROOT / "examples" / "data" / "credit.csv").read_bytes())
    path = folder / "credit-tabular.yaml"
    path.write_text(text)
    return path


def interrupt(home: Path, name: str, run_key: str, stage: str) -> float:
    """What a crash during ``stage`` leaves: the stage not finished, the record ``running`` by a dead pid.
    Returns the finished_at of the stage before it (which a resume must keep)."""
    import shutil

    root = home / "pipelines" / name
    record_path = root / "runs" / f"{run_key}.json"
    record = json.loads(record_path.read_text())
    shutil.rmtree(root / "stages" / f"{stage}-{record['stage_keys'][stage]}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.update(status="running", pid=dead.pid)
    record_path.write_text(json.dumps(record))
    train = json.loads((root / "stages" / f"train-{record['stage_keys']['train']}" / "stage.json").read_text())
    return train["finished_at"]


def wait_status(url: str, run_id: str, want: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{url}/admin/runs/{run_id}", headers=AUTH, timeout=30).json()
        if run.get("status") == want:
            return run
        assert run.get("status") != "failed", run.get("error")
        assert time.monotonic() < deadline, f"run {run_id} still {run.get('status')} after {timeout}s"
        time.sleep(0.5)


def wait_exited(pid: int, timeout: float = 60) -> None:
    """Until the pipeline's process is gone (a zombie of the server counts as gone): it records
    ``finished`` a moment before it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
    raise AssertionError(f"pipeline process {pid} still running after {timeout}s")


@pytest.fixture(scope="module")
def home(tmp_path_factory, live_server, autoglm_home) -> Path:
    h = tmp_path_factory.mktemp("resume-home")
    (h / "demo").symlink_to(autoglm_home / "demo")
    return h


@pytest.fixture(scope="module")
def server(home):
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "AUTOGLM_SERVER", "AUTOGLM_API_KEY", "AUTOGLM_STATE_URL", "AUTOGLM_WEBHOOKS"):
            mp.delenv(var, raising=False)
        mp.setenv("AUTOGLM_ADMIN_KEY", ADMIN)
        live = start_live_server(home, "autoglm-demo", "--log-level", "warning")
    yield live
    _stop(live.process)


@pytest.fixture(scope="module")
def finished(server, home, tmp_path_factory):
    """The light example run through the API (until evaluate, no tracking), waited for."""
    pipeline = light_tabular(tmp_path_factory.mktemp("pipeline"))
    r = httpx.post(f"{server.url}/admin/pipelines/run", headers=AUTH, timeout=60,
                   json={"path": str(pipeline), "until": "evaluate", "tracking": False})
    assert r.status_code == 202, r.text
    handle = r.json()
    wait_status(server.url, handle["id"], "finished")
    wait_exited(handle["pid"])
    return handle, pipeline


def test_an_interrupted_run_resumes_keeping_its_finished_stages(server, home, finished):
    handle, _ = finished
    run_id = handle["id"]
    r = httpx.post(f"{server.url}/admin/runs/{run_id}/resume", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "run_finished", r.text
    kept = interrupt(home, "credit-tabular", run_id, "evaluate")
    run = httpx.get(f"{server.url}/admin/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "interrupted" and run["stages"]["evaluate"]["status"] == "pending"
    r = httpx.post(f"{server.url}/admin/runs/{run_id[:8]}/resume", headers=AUTH)  # the short id works too
    assert r.status_code == 202, r.text
    resumed = r.json()
    assert resumed["id"] == run_id and resumed["started"] and resumed["resumed"], (resumed["status"], resumed.get("pid"))
    run = wait_status(server.url, run_id, "finished")
    wait_exited(resumed["pid"])
    assert {s: v["status"] for s, v in run["stages"].items()} == {
        "preprocess": "finished", "train": "finished", "evaluate": "finished"}
    assert run["metrics"]["test_auc"] > 0.5
    train = json.loads((Path(run["stages"]["train"]["dir"]) / "stage.json").read_text())
    assert train["finished_at"] == kept  # train was found done by its key, not run again
    log = Path(resumed["log"]).read_text()
    assert "[train] cached" in log and "[evaluate] done" in log


def test_changed_data_refuses_to_resume(server, home, finished):
    handle, pipeline = finished
    interrupt(home, "credit-tabular", handle["id"], "evaluate")
    data = pipeline.parent / "data" / "credit.csv"
    original = data.read_bytes()
    try:
        data.write_bytes(original + original.splitlines(keepends=True)[-1])  # one more row: another run
        r = httpx.post(f"{server.url}/admin/runs/{handle['id']}/resume", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"]["code"] == "run_changed", r.text
        assert "autoglm pipeline run" in r.json()["error"]["message"]
    finally:
        data.write_bytes(original)
    r = httpx.post(f"{server.url}/admin/runs/{handle['id']}/resume", headers=AUTH)
    assert r.status_code == 202, r.text
    wait_status(server.url, handle["id"], "finished")
    wait_exited(r.json()["pid"])


def test_unknown_run_and_missing_key(server):
    r = httpx.post(f"{server.url}/admin/runs/0123456789abcdef/resume", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "run_id"
    assert httpx.post(f"{server.url}/admin/runs/0123456789abcdef/resume").status_code == 401
