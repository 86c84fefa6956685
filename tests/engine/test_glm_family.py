"""GLM-4 (2024: ``GlmForCausalLM``, glm-4-9b-chat's architecture; demo ``autoglm-demo-glm``) through the
engine: the batch runner reproduces ``generate()`` token for token, joined and staggered, and
``autoglm serve`` serves it to the openai SDK with ``generate()``'s greedy tokens; ``autoglm plan`` plans it."""
from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import batch_runner_outputs, family_prompts, generate_reference

N = 10


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory):
    from autoglm.hub.demo import ensure_demo_model

    return ensure_demo_model("autoglm-demo-glm", tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def glm(glm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(glm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(glm_dir)


def _reference(model, prompt: list[int]) -> list[int]:
    return generate_reference(model, prompt, N)


_prompts = family_prompts


def test_demo_is_glm4_2024(glm):
    model, _ = glm
    assert type(model).__name__ == "GlmForCausalLM"
    layer = model.model.layers[0]
    assert not hasattr(layer, "post_self_attn_layernorm")  # two norms per block, not GLM-4-0414's four


@pytest.mark.parametrize("mode", ["batched", "staggered"])
def test_batch_runner_matches_generate(glm, mode):
    model, tok = glm
    prompts = _prompts(tok)
    assert batch_runner_outputs(model, prompts, N, mode) == [_reference(model, p) for p in prompts]


def test_plan_works_offline(capsys):
    from autoglm.cli.main import main

    assert main(["plan", "autoglm-demo-glm"]) == 0
    out = capsys.readouterr().out
    assert "autoglm-demo-glm" in out


@pytest.fixture(scope="module")
def glm_server(autoglm_home, glm_dir):
    from tests.conftest import _stop, start_live_server

    server = start_live_server(autoglm_home, "autoglm-demo-glm", "--max-num-seqs", "4", "--quantize", "fp32")
    try:
        yield server
    finally:
        _stop(server.process)


def test_serve_end_to_end_with_the_openai_sdk(glm_server, glm):
    from openai import OpenAI

    model, tok = glm
    client = OpenAI(base_url=glm_server.base_url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["autoglm-demo-glm"]
    chat = client.chat.completions.create(model="autoglm-demo-glm", temperature=0, max_tokens=8,
                                          messages=[{"role": "user", "content": "你好"}],
                                          extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 8 and chat.choices[0].finish_reason == "length"
    prompt = tok.encode("the sea is", add_special_tokens=False)
    r = client.completions.create(model="autoglm-demo-glm", prompt=[prompt], max_tokens=N, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == tok.decode(_reference(model, prompt))
