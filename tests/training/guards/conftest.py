"""The demo model (real GLM-4 architecture with grouped KV heads, random weights) and a loss on it."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_path(autoglm_home) -> Path:
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model("autoglm-demo", autoglm_home))


@pytest.fixture
def glm(demo_path):
    """A fresh copy per test: guards change weights and hooks."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(demo_path).eval()


@pytest.fixture
def batch():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(16, 8192, (2, 24), generator=g)  # [B, T] ordinary token ids


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny: one thread is fastest, and the shared 2 cores are not oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
