"""The demo model (real GLM-4 architecture, random weights), loaded once per module, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_path(autoglm_home) -> Path:
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model("autoglm-demo", autoglm_home))


@pytest.fixture(scope="module")
def teacher(demo_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_path).eval()


@pytest.fixture(scope="module")
def tokenizer(demo_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_path)


@pytest.fixture
def cli(autoglm_home):
    """Run ``python -m autoglm ARGS`` with the session's AUTOGLM_HOME; returns the CompletedProcess."""

    def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {**os.environ, "AUTOGLM_HOME": str(autoglm_home), "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)

    return run
