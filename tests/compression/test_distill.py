"""Distillation on the demo model: the KL goes down, checkpoints resume exactly, the CLI works."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from autoglm.compression.distill import distill, distill_loss, latest_checkpoint, make_student
from autoglm.errors import ConfigError
from autoglm.quantization.quality import eval_sample_text

SMALL = dict(batch_size=8, seq_len=64, progress=False)


def test_distill_reduces_kl(teacher, tokenizer):
    student, init = make_student(teacher, 2)
    assert "layers [0, 3]" in init
    # few steps on wide batches: the optimizer step over the student's 5M weights is most of a step's cost,
    # and 10 steps of 8x64 tokens lower the KL by 27-44% over seeds 0-2 (30 steps of 2x32: 17-21%)
    report = distill(teacher, student, eval_sample_text(), steps=10, lr=2e-4, tokenizer=tokenizer, **SMALL)
    print("\n".join(report.lines()))
    assert report.kl_after < 0.85 * report.kl_before
    assert report.student_params < report.teacher_params and len(report.losses) == 10


def test_resume_continues_from_checkpoint_and_matches_an_uninterrupted_run(teacher, tokenizer, tmp_path):
    text = eval_sample_text()
    tiny = dict(batch_size=1, seq_len=16, progress=False, tokenizer=tokenizer)
    a = make_student(teacher, 1)[0]  # run to the end, checkpointing on the way: also the uninterrupted reference
    distill(teacher, a, text, steps=4, out_dir=tmp_path / "a", checkpoint_every=2, **tiny)
    assert latest_checkpoint(tmp_path / "a").name == "step-000004"
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step-000004")  # as if it stopped after step 2
    resumed = make_student(teacher, 1)[0]
    report = distill(teacher, resumed, text, steps=4, out_dir=tmp_path / "a", checkpoint_every=2, **tiny)
    assert report.start_step == 2 and [s for s, _ in report.losses] == [1, 2, 3, 4]
    for (name, p), q in zip(resumed.named_parameters(), a.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    saved = json.loads((tmp_path / "a" / "distill_report.json").read_text())
    assert saved["start_step"] == 2 and saved["steps"] == 4


def test_distill_loss_is_scaled_kl():
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    T = 2.0
    manual = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(distill_loss(s, t, T), manual, atol=1e-6)
    assert float(distill_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_student_width_and_errors(teacher, tokenizer):
    narrow, init = make_student(teacher, 1, hidden_size=64)
    assert narrow.config.hidden_size == 64 and narrow.config.num_hidden_layers == 1 and "random" in init
    with pytest.raises(ConfigError, match="between 1 and the teacher's 4"):
        make_student(teacher, 9)
    with pytest.raises(ConfigError, match="steps"):
        distill(teacher, narrow, "some text", steps=0, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="out_dir"):
        distill(teacher, narrow, "some text", steps=1, tokenizer=tokenizer, checkpoint_every=1)


def test_cli_distill_then_resume(cli, teacher, tokenizer, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text(eval_sample_text(), encoding="utf-8")
    out = tmp_path / "student"
    # the first two steps in-process (what the CLI runs: the same distill() and student), leaving a checkpoint
    # at step 2 in --out; one CLI run then resumes there, checkpoints, evaluates and saves
    distill(teacher, make_student(teacher, 1)[0], eval_sample_text(), steps=2, batch_size=1, seq_len=16,
            out_dir=out, checkpoint_every=2, tokenizer=tokenizer, progress=False)
    assert latest_checkpoint(out).name == "step-000002"
    args = ["compress", "distill", "autoglm-demo", "--student-layers", "1", "--text", str(text), "--batch-size", "1",
            "--seq-len", "16", "--checkpoint-every", "2", "--out", str(out), "--eval-tokens", "32"]
    res = cli(*args, "--steps", "3", "--speed-tokens", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed at step 2" in res.stdout
    assert "KL(teacher || student)" in res.stdout and "tok/s b=1" in res.stdout
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert latest_checkpoint(out).name == "step-000003"  # --checkpoint-every reached distill()
    assert json.loads((out / "distill_report.json").read_text())["start_step"] == 2


def test_cli_distill_bad_args_one_line(cli, tmp_path):
    res = cli("compress", "distill", "autoglm-demo", "--steps", "ten", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "'ten'" in res.stderr
    res = cli("compress", "distill", "autoglm-demo", "--text", str(tmp_path / "nope.txt"))
    assert res.returncode == 2 and "nope.txt" in res.stderr and res.stderr.strip().count("\n") == 0
