from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_glm4_dir(tmp_path_factory):
    """A random 2-layer GLM-4 with a byte-level BPE tokenizer and a chat template, saved once per session."""
    from autoglm.bench.random_model import save_random_glm4

    return save_random_glm4(tmp_path_factory.mktemp("tiny-glm4"))
