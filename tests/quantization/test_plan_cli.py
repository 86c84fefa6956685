"""`autoglm plan` as a user runs it: a real subprocess, real argument parsing, real exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def autoglm(*args: str, env_home=None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "AUTOGLM_HOME": str(env_home)} if env_home else None
    return subprocess.run([sys.executable, "-m", "autoglm", "plan", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("free,chosen", [("12", "int4"), ("16", "int8"), ("24", "bf16")])
def test_plan_for_a_gpu_that_is_not_here(free, chosen, tmp_path):
    r = autoglm("glm-4-9b-chat", "--device", "cuda", "--free-gb", free, env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:3] == ["precision", "weights", "GiB"]
    marked = [line.split()[0] for line in lines if line.rstrip().endswith("<--")]
    assert marked == [chosen]
    assert f"choice: --quantize {chosen} " in r.stdout


def test_plan_json(tmp_path):
    r = autoglm("glm-4-9b-chat", "--device", "cuda", "--free-gb", "11", "--json", env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["precision"] == "int4" and out["max_num_seqs"] == 8
    assert abs(out["architecture"]["num_parameters"] - 9.4e9) / 9.4e9 < 0.02


def test_plan_local_directory_reads_config_and_sizes(tmp_path):
    from transformers import Glm4Config

    model_dir = tmp_path / "my-glm"
    Glm4Config(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, max_position_embeddings=1024).save_pretrained(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)
    r = autoglm(str(model_dir), "--device", "cpu", "--max-num-seqs", "4")
    assert r.returncode == 0, r.stderr
    assert "checkpoint on disk" in r.stdout and "max_model_len 1024, max_num_seqs 4" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["glm-4-9b-chat", "--max-num-seqs", "abc"], "--max-num-seqs"),
    (["glm-4-9b-chat", "--max-model-len", "0"], "--max-model-len"),
    (["glm-4-9b-chat", "--free-gb", "-3"], "--free-gb"),
    (["glm-4-9b-chat", "--device", "tpu"], "--device"),
    (["glm-4-9b-chat", "--quantize", "int3"], "--quantize"),
    (["glm-4-9b-chat", "--device", "cpu", "--quantize", "int4"], "pip install autoglm[cuda]"),
    (["glm-4-9b-chat", "--device", "cuda", "--free-gb", "4"], "does not fit"),
    (["no-such-model-anywhere"], "no-such-model-anywhere"),
])
def test_bad_input_is_one_line_and_non_zero(args, needle, tmp_path):
    r = autoglm(*args, env_home=tmp_path)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
