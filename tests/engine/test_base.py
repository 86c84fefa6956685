"""The engine registry: names, auto selection, unknown names."""
from __future__ import annotations

import pytest

from autoglm.config import EngineSettings
from autoglm.engine.base import auto_engine_name, available_engines, create_engine
from autoglm.errors import UnsupportedError


def test_auto_picks_llamacpp_for_gguf_only():
    assert auto_engine_name("/models/glm-4-9b-q4_k_m.GGUF") == "llamacpp"
    assert auto_engine_name("glm-4-9b-chat") == "transformers"
    assert type(create_engine(EngineSettings(model="autoglm-demo"))).__name__ == "TransformersEngine"


def test_registry_lists_backends_and_rejects_unknown():
    assert {"transformers", "llamacpp"} <= set(available_engines())
    with pytest.raises(UnsupportedError, match="unknown engine 'tgi'.*available: "):
        create_engine(EngineSettings(engine="tgi"))
