"""The newcomer's path, end to end with real processes: `autoglm pipeline run` on a LoRA pipeline,
killed with SIGKILL mid-training, run again (preprocessing reused, training resumed from its
checkpoint), the result registered in MLflow and served from `models:/NAME@ALIAS` by `autoglm serve`,
answering the official openai client with the same greedy tokens as the trained model; and the same
pipeline with `--nproc 2` (two data-parallel processes)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("peft")
pytest.importorskip("mlflow")

from tests.conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

PIPELINE = """\
name: e2e-lora
seed: 0
data: {{train: {data}, valid_fraction: 0.1}}
preprocess: {{max_length: 64}}
train:
  trainer: causal-lm
  model: autoglm-demo
  method: lora
  batch_size: 4
  max_steps: {steps}
  lr: 2.0e-3
  checkpoint_every: 2
  guards: [{{type: explosion}}]
evaluate: {{}}
register: {{alias: challenger}}
"""


def cli(args: list[str], home: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "autoglm", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture()
def home(tmp_path, autoglm_home):
    h = tmp_path / "home"
    h.mkdir()
    for name in ("models",):  # reuse the session's demo model build (it is only read)
        if (autoglm_home / name).exists():
            os.symlink(autoglm_home / name, h / name)
    return h


def test_kill_resume_register_and_serve(tmp_path, home):
    from openai import OpenAI

    pipeline = tmp_path / "lora.yaml"
    pipeline.write_text(PIPELINE.format(data=ROOT / "examples" / "data" / "chat.jsonl", steps=10))
    proc = cli(["pipeline", "run", str(pipeline), "--quiet"], home)
    checkpoints = home / "pipelines" / "e2e-lora" / "stages"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("train-*.work/checkpoints/step-*[0-9]")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    again = cli(["pipeline", "run", str(pipeline), "--quiet"], home)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert lines[0].startswith("[preprocess] cached"), out
    assert lines[1].startswith("[train] done") and "resumed_from=0" not in lines[1], out
    assert "registered: models:/e2e-lora@challenger (version 1)" in out

    port = free_port()
    server = cli(["serve", "--model", "models:/e2e-lora@challenger", "--served-model-name", "e2e", "--port", str(port),
                  "--quantize", "none",  # fp32 like the reference below (auto would pick int8 on CPU)
                  "--log-level", "warning"], home)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(model="e2e", messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                               max_tokens=8, temperature=0)
        served = reply.choices[0].message.content
    finally:
        server.terminate()
        server.wait(timeout=30)

    # the trained model itself, greedy, through transformers: the served text is the same
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = next((home / "pipelines" / "e2e-lora" / "stages").glob("train-*[0-9a-f]/model"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out_ids = model.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tok.decode(out_ids[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert served == expected


def test_two_data_parallel_processes_train_the_pipeline(tmp_path, home):
    pipeline = tmp_path / "lora.yaml"
    pipeline.write_text(PIPELINE.format(data=ROOT / "examples" / "data" / "chat.jsonl", steps=3)
                        .replace("register: {alias: challenger}\n", ""))
    proc = cli(["pipeline", "run", str(pipeline), "--quiet", "--nproc", "2", "--no-tracking"], home)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    train = [ln for ln in out.splitlines() if ln.startswith("[train]")]
    assert train and "steps=3" in train[0]
    one = cli(["pipeline", "run", str(pipeline), "--quiet", "--no-tracking"], home)  # another key: 1 process
    out1, _ = one.communicate(timeout=300)
    assert one.returncode == 0 and "[preprocess] cached" in out1 and "[train] done" in out1
    shutil.rmtree(home / "pipelines", ignore_errors=True)
