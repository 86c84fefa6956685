"""benchmarks/compare_serve.py end to end on the tiny model: both servers, the generate() reference, the table."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_serve.py"
HAVE_AUTOGLM_SERVE = importlib.util.find_spec("autoglm.cli.serve") is not None


def test_compare_serve_tiny(tiny_glm4_dir, tmp_path):
    pytest.importorskip("accelerate", reason="`transformers serve` needs accelerate")
    out = tmp_path / "cmp.json"
    cmd = [sys.executable, str(SCRIPT), "--model-dir", str(tiny_glm4_dir), "--concurrency", "1,2",
           "--num-prompts", "2", "--max-tokens", "6", "--input-len", "8", "--cb-num-blocks", "16",
           "--startup-timeout", "120", "--json", str(out)]
    if not HAVE_AUTOGLM_SERVE:
        cmd += ["--skip", "autoglm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| server | precision | concurrency | req/s | output tok/s |" in proc.stdout
    record = json.loads(out.read_text())
    servers = {(r["server"], r["concurrency"]) for r in record["runs"]}
    assert {("transformers serve", 1), ("transformers serve", 2)} <= servers
    if HAVE_AUTOGLM_SERVE:
        assert {("autoglm serve", 1), ("autoglm serve", 2)} <= servers
        assert any("/ transformers serve, c=2" in line for line in record["ratios"])
    assert all(r["metrics"]["failed"] == 0 and r["metrics"]["completed"] == 2 for r in record["runs"])
    assert record["generate_reference"]["generate_tok_s"] > 0


def test_compare_serve_bad_model_dir(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "has no config.json" in proc.stderr and "Traceback" not in proc.stderr
