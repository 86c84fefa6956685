"""A LoRA adapter merged onto a loaded (Q/K/V-fused) model in memory gives peft's merged model's logits;
a second adapter replaces the first exactly; a quantized base is refused with the reason."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def _adapter(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                      "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    return out


def _peft_merged(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


@pytest.fixture(scope="module")
def base(autoglm_home) -> Path:
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model("autoglm-demo", autoglm_home))


@pytest.fixture(scope="module")
def loaded(base):
    """The demo model as the transformers backend serves it: fp32, Q/K/V fused."""
    from transformers import AutoModelForCausalLM

    from autoglm.engine.fused import fuse_qkv

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    assert fuse_qkv(model) > 0
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_on_the_fused_model_matches_peft(tmp_path, base, loaded):
    from autoglm.deploy.adapter_swap import apply_merge, plan_merge

    a1 = _adapter(base, tmp_path / "a1", seed=1)
    merges, why = plan_merge(loaded, a1)
    assert merges is not None, why
    assert any(m.rows is not None for m in merges)  # q/k/v deltas land in row slices of qkv_proj
    ours = copy.deepcopy(loaded)
    apply_merge(ours, merges)
    ids = torch.tensor([[5, 100, 200, 300, 400, 17, 42]])
    expected = _logits(_peft_merged(base, a1), ids)
    assert torch.allclose(_logits(ours, ids), expected, atol=1e-4)
    assert not torch.allclose(_logits(loaded, ids), expected, atol=1e-2)  # the adapter does change the model

    # a second adapter over the same base: the first one's deltas out, the second's in
    from dataclasses import replace

    a2 = _adapter(base, tmp_path / "a2", seed=2)
    merges2, _ = plan_merge(ours, a2)
    apply_merge(ours, [replace(m, scale=-m.scale, undo=True) for m in merges] + merges2)
    assert torch.allclose(_logits(ours, ids), _logits(_peft_merged(base, a2), ids), atol=1e-4)


def test_a_quantized_or_other_base_is_refused_with_the_reason(tmp_path, base, loaded):
    from autoglm.deploy.adapter_swap import plan_merge

    a1 = _adapter(base, tmp_path / "a1", seed=1)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(loaded), {torch.nn.Linear}, dtype=torch.qint8)
    merges, why = plan_merge(quantized, a1)
    assert merges is None and "quantized" in why
    small = copy.deepcopy(loaded)
    small.model.layers[0].self_attn.o_proj = torch.nn.Linear(8, 8)
    merges, why = plan_merge(small, a1)
    assert merges is None and "do not fit" in why


def test_the_copy_shares_the_weights_the_adapter_does_not_touch(tmp_path, base, loaded):
    from autoglm.deploy.adapter_swap import apply_merge, copy_sharing_untouched, plan_merge

    merges, _ = plan_merge(loaded, _adapter(base, tmp_path / "a1", seed=1))
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    ours = copy_sharing_untouched(loaded, {m.module for m in merges})
    apply_merge(ours, merges)
    attn = ours.model.layers[0].self_attn
    assert attn.qkv_proj.weight.data_ptr() != loaded.model.layers[0].self_attn.qkv_proj.weight.data_ptr()
    assert ours.model.embed_tokens.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert ours.lm_head.weight.data_ptr() == loaded.lm_head.weight.data_ptr()
    for k, v in loaded.state_dict().items():  # the served model was not written to
        assert torch.equal(v, before[k]), k
