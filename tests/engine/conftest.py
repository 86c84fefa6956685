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
