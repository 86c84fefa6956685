"""Shared: the real CLI as a subprocess, and the two-models tree rendered once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def autoglm(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None and shutil.which("kustomize") is None,
                                   reason="kubectl (or kustomize) is not installed")


@pytest.fixture(scope="session")
def two_models_tree(tmp_path_factory) -> Path:
    """``autoglm deploy examples/two-models.yaml --to kubernetes --out DIR``, as a user runs it."""
    out = tmp_path_factory.mktemp("k8s") / "tree"
    r = autoglm("deploy", str(EXAMPLES / "two-models.yaml"), "--to", "kubernetes", "--out", str(out),
                env={"AUTOGLM_ADMIN_KEY": "admin-secret-value-123"})
    assert r.returncode == 0, r.stderr
    assert f"files to {out}/" in r.stdout and "kubectl apply -k" in r.stdout
    return out
