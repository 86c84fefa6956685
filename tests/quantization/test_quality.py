"""Quality report and quantized export on the demo model (real GLM-4 modules, real int8 kernels)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoglm.compression.prune import prune_model
from autoglm.errors import ConfigError, ModelNotFoundError
from autoglm.quantization import apply_precision, detect_device
from autoglm.quantization.export import MANIFEST, load_quantized, save_quantized
from autoglm.quantization.quality import QualityReport, eval_sample_text, evaluate_quality

IDS = torch.arange(30, 70).unsqueeze(0)  # [1, 40]


@pytest.fixture(scope="module")
def demo_path(autoglm_home) -> Path:
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model("autoglm-demo", autoglm_home))


@pytest.fixture(scope="module")
def ref(demo_path):
    return AutoModelForCausalLM.from_pretrained(demo_path).eval()


@pytest.fixture(scope="module")
def tok(demo_path):
    return AutoTokenizer.from_pretrained(demo_path)


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def test_sample_text_ships():
    text = eval_sample_text()
    assert len(text) > 1500 and "lighthouse" in text


def test_identical_models_are_not_flagged(ref, tok):
    report = evaluate_quality(ref, ref, tok, random_weights=True)
    assert report.cosine == pytest.approx(1.0, abs=1e-5) and report.top1_agreement == 1.0
    assert report.ppl_ratio == pytest.approx(1.0, abs=1e-6)
    assert not report.flagged and report.lines()[-1] == "quality OK"
    assert any("meaningless" in n for n in report.notes) and report.tokens == 256


def test_heavily_pruned_model_is_flagged(ref, tok):
    pruned, _ = prune_model(ref, "structured", mlp_ratio=0.75, heads_ratio=0.5, copy_model=True)
    report = evaluate_quality(ref, pruned, tok, max_tokens=64)
    assert report.flagged and report.cosine < 0.98
    assert report.lines()[-1].startswith("WARNING: quality degraded: logit cosine")


def test_perplexity_ratio_alone_flags():
    r = QualityReport(tokens=10, cosine=0.999, cosine_min=0.99, top1_agreement=1.0, ref_perplexity=10.0,
                      cand_perplexity=12.0)
    assert r.flagged and r.reasons == ["perplexity ratio 1.200 > 1.1"]
    assert r.to_dict()["flagged"] is True


def test_too_short_text_is_an_error(ref, tok):
    with pytest.raises(ConfigError, match="at least a sentence"):
        evaluate_quality(ref, ref, tok, text="a")


def test_int8_copy_reloads_with_identical_logits(ref, tok, demo_path, tmp_path):
    q = apply_precision(copy.deepcopy(ref), "int8", detect_device("cpu")).eval()
    out = save_quantized(q, "int8", tmp_path / "q8", source_dir=demo_path)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "dynamic-int8" and len(manifest["linears"]) == 4 * 6 + 1  # 6 per layer + lm_head
    assert (out / "tokenizer.json").is_file() and not (out / "model.safetensors").exists()
    weights = (out / "model-int8.safetensors").stat().st_size
    assert weights < 0.55 * (demo_path / "model.safetensors").stat().st_size
    loaded = load_quantized(out)
    assert torch.equal(logits(loaded), logits(q))
    assert evaluate_quality(ref, loaded, tok, max_tokens=64).cosine > 0.98
    with pytest.raises(ModelNotFoundError, match=MANIFEST):
        load_quantized(demo_path)


def test_bf16_copy_is_a_plain_checkpoint(ref, demo_path, tmp_path):
    m = apply_precision(copy.deepcopy(ref), "bf16", detect_device("cpu"))
    out = save_quantized(m, "bf16", tmp_path / "bf16", source_dir=demo_path)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert plain.dtype == torch.bfloat16
    assert torch.equal(logits(load_quantized(out)), logits(plain))


def _cli(home, *args):
    env = {**os.environ, "AUTOGLM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "autoglm", "quantize", *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_cli_quantize_int8(autoglm_home, tmp_path):
    res = _cli(autoglm_home, "autoglm-demo", "--to", "int8", "--out", str(tmp_path / "q"), "--eval-tokens", "64")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wrote int8 copy" in res.stdout and "logit cosine" in res.stdout and "quality OK" in res.stdout
    assert (tmp_path / "q" / MANIFEST).is_file()


@pytest.mark.parametrize("to,needle", [("gguf-q8_0", "autoglm convert MODEL --to gguf --type q8_0"),
                                       ("int3", "unknown --to 'int3'"), ("int4", "int4")])
def test_cli_quantize_bad_target_one_line(autoglm_home, tmp_path, to, needle):
    res = _cli(autoglm_home, "autoglm-demo", "--to", to, "--out", str(tmp_path / "q"), "--device", "cpu")
    assert res.returncode == 2 and needle in res.stderr
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ")
