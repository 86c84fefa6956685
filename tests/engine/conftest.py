from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from autoglm.hub.demo import ensure_demo_model

    return ensure_demo_model("autoglm-demo", tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def demo(demo_dir):
    """(model fp32 eval, tokenizer) of the demo model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(demo_dir)


def batch_runner_outputs(model, prompts: list[list[int]], n: int, mode: str) -> list[list[int]]:
    """Greedy tokens of ``prompts`` through the engine's BatchRunner: all joining at step 0 (``batched``)
    or at steps 0, 3 and 5 (``staggered``), each leaving after ``n`` tokens; compare with ``generate()``."""
    from autoglm.engine.runner import BatchRunner

    runner = BatchRunner(model)
    outs: dict[int, list[int]] = {k: [] for k in range(len(prompts))}
    join_at = {k: 0 for k in outs} if mode == "batched" else {k: (0, 3, 5)[k % 3] for k in outs}
    for step in range(4 * n):
        joining = [k for k, s in join_at.items() if s == step]
        if joining:
            logits = runner.prefill(joining, [prompts[k] for k in joining])
            for i, k in enumerate(joining):
                outs[k].append(int(logits[i].argmax()))
        runner.remove([k for k in runner.rows if len(outs[k]) >= n])
        if not runner.rows:
            if step > max(join_at.values()):
                break
            continue
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    assert runner.cache is None  # every sequence left
    return [outs[k][:n] for k in range(len(prompts))]


def generate_reference(model, prompt: list[int], n: int) -> list[int]:
    """``generate()``'s greedy ``n`` tokens after ``prompt`` (no early stop): what the engine must reproduce."""
    import torch

    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def family_prompts(tok) -> list[list[int]]:
    """Three prompts (English, Chinese, code) as ids, for the per-family engine tests."""
    texts = ["hello world", "服务一个模型需要多少内存？", "def f(x):\n    return x * 2\n" * 3]
    return [tok.encode(t, add_special_tokens=False) for t in texts]
