"""Pruning on the demo model (GLM-4 layout, 4 layers, 4 query heads in 2 KV groups, 688 MLP channels)."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from autoglm.compression.prune import feasible_heads, linear_sparsity, prune_model
from autoglm.compression.report import decode_speed
from autoglm.errors import ConfigError, UnsupportedError

H, D, I, L, V = 256, 64, 688, 4, 8192  # hidden, head_dim, intermediate, layers, vocab of autoglm-demo


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


IDS = torch.arange(20, 52).unsqueeze(0)  # [1, 32]


def test_structured_prune_shapes_params_config(teacher, tmp_path):
    before = sum(p.numel() for p in teacher.parameters())
    pruned, report = prune_model(teacher, "structured", mlp_ratio=0.5, heads_ratio=0.5, copy_model=True)
    keep_i, heads, kv = I // 2, 2, 2  # GQA tie-break keeps both KV groups, one query head each
    removed_per_layer = 3 * H * (I - keep_i) + 2 * (2 * H * D + D)  # MLP rows/cols; 2 q heads (+bias), their o cols
    assert report.params_before == before
    assert report.params_after == before - L * removed_per_layer
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after
    for layer in pruned.model.layers:
        assert tuple(layer.mlp.gate_up_proj.weight.shape) == (2 * keep_i, H)
        assert tuple(layer.mlp.down_proj.weight.shape) == (H, keep_i)
        assert tuple(layer.self_attn.q_proj.weight.shape) == (heads * D, H)
        assert tuple(layer.self_attn.k_proj.weight.shape) == (kv * D, H)
        assert tuple(layer.self_attn.o_proj.weight.shape) == (H, heads * D)
    cfg = pruned.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (keep_i, 2, 2, D)
    assert teacher.config.intermediate_size == I  # copy_model left the original alone

    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(logits(reloaded, IDS), logits(pruned, IDS), atol=1e-5)
    out = reloaded.generate(IDS, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, IDS.shape[1] + 6)
    t0, t1 = decode_speed(teacher, 1, new_tokens=8), decode_speed(reloaded, 1, new_tokens=8)
    print(f"decode tok/s at batch 1: {t0:.0f} before, {t1:.0f} after pruning")  # timing is printed, not asserted


def _zero_head(attn, h):
    attn.q_proj.weight[h * D:(h + 1) * D] = 0
    attn.q_proj.bias[h * D:(h + 1) * D] = 0
    attn.o_proj.weight[:, h * D:(h + 1) * D] = 0


@pytest.mark.parametrize("heads_ratio,zero_heads,zero_groups", [
    (0.5, [1, 3], []),  # one query head in each KV group goes
    (0.75, [1, 2, 3], [1]),  # KV group 1 goes whole, and head 1 of group 0
])
def test_structured_prune_removes_exactly_the_dead_parts(teacher, heads_ratio, zero_heads, zero_groups):
    # Heads and channels that contribute nothing score lowest; removing them must not change the output.
    model = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer in model.model.layers:
            for h in zero_heads:
                _zero_head(layer.self_attn, h)
            for g in zero_groups:
                for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.weight[g * D:(g + 1) * D] = 0
                    proj.bias[g * D:(g + 1) * D] = 0
            dead = torch.arange(1, I, 2)  # every odd channel
            layer.mlp.gate_up_proj.weight[dead] = 0
            layer.mlp.gate_up_proj.weight[dead + I] = 0
            layer.mlp.down_proj.weight[:, dead] = 0
    pruned, _ = prune_model(model, "structured", mlp_ratio=0.5, heads_ratio=heads_ratio, copy_model=True)
    assert pruned.config.num_attention_heads == 4 - len(zero_heads)
    assert pruned.config.num_key_value_heads == 2 - len(zero_groups)
    assert torch.allclose(logits(pruned, IDS), logits(model, IDS), atol=1e-4)


def test_feasible_heads_respects_gqa():
    assert feasible_heads(32, 2, 24) == (2, 12)  # glm-4-9b: 2 KV groups of 16
    assert feasible_heads(12, 4, 9) == (3, 3)  # autoglm-demo-100m
    assert feasible_heads(4, 2, 3) == (2, 1)  # never keeps more than asked; ties keep more KV groups
    assert feasible_heads(4, 2, 0) == (1, 1)


def test_heads_ratio_rounding_is_reported(teacher):
    _, report = prune_model(teacher, "structured", heads_ratio=0.25, copy_model=True)
    assert any("GQA" in n and "removed 50%" in n for n in report.notes)


def test_magnitude_prune_reaches_sparsity(teacher):
    model, report = prune_model(teacher, "magnitude", amount=0.6, copy_model=True)
    assert abs(linear_sparsity(model) - 0.6) < 1e-4
    assert linear_sparsity(teacher) < 0.01
    assert report.params_after == report.params_before
    assert torch.equal(model.lm_head.weight, teacher.lm_head.weight)  # embeddings and head are not pruned
    assert "no faster" in report.notes[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="structured", mlp_ratio=1.0), "mlp-ratio"),
    (dict(method="structured", mlp_ratio=-0.1), "mlp-ratio"),
    (dict(method="structured"), "above 0"),
    (dict(method="magnitude"), "--amount"),
    (dict(method="lottery", amount=0.5), "lottery"),
])
def test_bad_arguments(teacher, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        prune_model(teacher, copy_model=True, **kwargs)


def test_unknown_layout_is_refused():
    with pytest.raises(UnsupportedError, match="GLM-4"):
        prune_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "magnitude", amount=0.5)


def test_cli_prune(cli, tmp_path):
    out = tmp_path / "pruned"
    t0 = time.perf_counter()
    res = cli("compress", "prune", "autoglm-demo", "--method", "structured", "--mlp-ratio", "0.5",
              "--heads-ratio", "0.25", "--out", str(out), "--speed-tokens", "2", "--eval-tokens", "32")
    assert res.returncode == 0, res.stderr[-2000:]
    print(res.stdout, f"({time.perf_counter() - t0:.1f}s)")
    assert "tok/s b=8" in res.stdout and "change" in res.stdout
    assert "WARNING: quality degraded" in res.stdout  # random weights lose a lot to 50% pruning
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == I // 2 and (out / "tokenizer.json").is_file()


def test_cli_prune_bad_ratio_is_one_line(cli, tmp_path):
    res = cli("compress", "prune", "autoglm-demo", "--mlp-ratio", "1.5", "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--mlp-ratio" in res.stderr and "1.5" in res.stderr
