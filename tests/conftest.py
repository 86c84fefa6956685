"""Shared fixtures.

``autoglm_home``: one AUTOGLM_HOME for the whole test session (demo models are built there once);
``fresh_home``: an empty one for a single test (pipelines, studies and MLflow stores of its own).
``live_server``: a real ``python -m autoglm serve --model autoglm-demo`` process on a free port,
started on first use, shared by the session, stopped at the end; its log is printed when it fails
to start and when any test of the session failed.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

LIVE_START_TIMEOUT_S = 120.0

# The longest test files, longest first (measured; `pytest --durations`). `make test` spreads files over
# workers (pytest-xdist, --dist loadfile) in collection order, so starting these first keeps one long file
# from running alone at the end.
LONGEST_FIRST = [
    "tests/training/test_e2e.py", "tests/training/test_compiled.py", "tests/tuning/test_serve.py",
    "tests/api/test_admin_api.py",
    "tests/api/test_batch_live.py", "tests/bench/test_compare_serve.py", "tests/training/test_kubeflow.py",
    "tests/deploy/test_swap.py", "tests/monitoring/test_served_monitor.py", "tests/console/test_console_browser.py",
    "tests/training/trainers/test_causal_lm.py", "tests/deploy/test_redeploy.py", "apps/risk/tests/test_risk_demo.py",
    "tests/bench/test_scripts.py", "tests/compression/test_distill.py", "tests/deploy/kubernetes/test_loopback.py",
    "tests/api/test_shutdown.py", "tests/deploy/test_live.py", "tests/training/test_distributed.py",
    "tests/api/test_feedback_live.py", "tests/tuning/test_study.py", "tests/recommend/test_live.py",
    "apps/risk/tests/test_risk_service.py", "tests/training/test_preference.py", "tests/training/test_guards_in_training.py",
    "tests/console/test_console_operations.py", "tests/api/test_admin_resume.py", "tests/training/trainers/test_fusion.py",
]


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = Path(str(config.rootpath))

    def key(item) -> int:
        try:
            rel = Path(str(item.path)).relative_to(root).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: the order within a file, and of the other files, is kept


@pytest.fixture(scope="session")
def autoglm_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("autoglm-home")


@pytest.fixture(scope="session", autouse=True)
def _no_test_uses_the_developers_home(autoglm_home):
    """A process a test starts without an AUTOGLM_HOME of its own gets the session's, never the developer's
    ~/.cache/autoglm (whose state store may hold keys: a server started there answers 401)."""
    before = os.environ.get("AUTOGLM_HOME")
    os.environ["AUTOGLM_HOME"] = str(autoglm_home)
    yield
    if before is None:
        os.environ.pop("AUTOGLM_HOME", None)
    else:
        os.environ["AUTOGLM_HOME"] = before


@pytest.fixture()
def fresh_home(tmp_path, monkeypatch) -> Path:
    """An empty AUTOGLM_HOME of this test's own (pipelines, studies, the MLflow store start empty)."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTOGLM_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    log_path: Path
    model: str = "autoglm-demo"

    @property
    def base_url(self) -> str:  # what the openai client wants
        return self.url + "/v1"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_live_server(home: Path, model: str = "autoglm-demo", *args: str) -> LiveServer:
    """A real ``python -m autoglm serve --model MODEL ARGS`` on a free port, healthy (or the test fails with
    its log); the caller stops it with ``_stop(server.process)``."""
    port = free_port()
    log_path = home / f"serve-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}-{port}.log"  # models:/X@Y is no file name
    env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "autoglm", "serve", "--model", model, "--port", str(port), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path, model=model)
    wait_healthy(proc, server.url, log_path, what="autoglm serve")
    return server


def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, *, what: str = "the server",
                 timeout: float = LIVE_START_TIMEOUT_S) -> None:
    """Return once ``url``/health answers 200; fail the test with the log's tail when ``proc`` exits first or
    ``timeout`` passes (then ``proc`` is stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before it was healthy:\n"
                        f"{log_path.read_text(errors='replace')[-6000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"{what} not healthy after {timeout:.0f}s:\n{log_path.read_text(errors='replace')[-6000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def live_server(autoglm_home, request) -> LiveServer:
    server = start_live_server(autoglm_home, "autoglm-demo", "--max-num-seqs", "8", "--log-level", "warning")
    proc, log_path = server.process, server.log_path
    yield server
    _stop(proc)
    if request.session.testsfailed:
        sys.stderr.write(f"\n--- autoglm serve log ({log_path}) ---\n{server.log_tail()}\n")
