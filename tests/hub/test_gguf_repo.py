"""A hub repository of GGUF files served as llama-server and Ollama take one: ``org/repo:TAG`` picks one
quantization (or one split set), only those files are downloaded into the store, the bare GGUF is served
with its own tokenizer, and a second start is offline-safe. Names and errors are tested on file lists;
the download and the server run against the local hub of tests/hub/conftest.py."""
from __future__ import annotations

import pytest

from autoglm.errors import ModelNotFoundError
from autoglm.hub.gguf_repo import parse_gguf_ref, quant_tags, select_gguf

REPO = ["README.md", "glm-4-9b-chat-Q4_K_M.gguf", "glm-4-9b-chat-Q8_0.gguf", "glm-4-9b-chat-f16.gguf",
        "mmproj-glm-F16.gguf", "glm-4-9b-chat-Q6_K-00001-of-00002.gguf", "glm-4-9b-chat-Q6_K-00002-of-00002.gguf"]


def test_names_are_parsed_as_llama_server_and_ollama_write_them():
    assert parse_gguf_ref("acme/glm-GGUF:Q4_K_M") == ("acme/glm-GGUF", "Q4_K_M")
    assert parse_gguf_ref("hf.co/acme/glm-GGUF:q8_0") == ("acme/glm-GGUF", "q8_0")
    assert parse_gguf_ref("hf.co/acme/glm-GGUF") == ("acme/glm-GGUF", None)
    for other in ("acme/glm", "glm-4-9b-chat", "models:/demo@champion", "./m.gguf", "/abs/path:tag", "a:b"):
        assert parse_gguf_ref(other) is None, other


def test_a_tag_picks_one_file_or_one_split_set_and_never_the_projector():
    assert select_gguf(REPO, "q8_0") == ["glm-4-9b-chat-Q8_0.gguf"]
    assert select_gguf(REPO, "F16") == ["glm-4-9b-chat-f16.gguf"]  # not mmproj-glm-F16.gguf
    assert select_gguf(REPO, "Q6_K") == ["glm-4-9b-chat-Q6_K-00001-of-00002.gguf",
                                         "glm-4-9b-chat-Q6_K-00002-of-00002.gguf"]
    assert select_gguf(REPO, None) == ["glm-4-9b-chat-Q4_K_M.gguf"]  # llama-server's default first
    assert quant_tags(REPO) == ["F16", "Q4_K_M", "Q6_K", "Q8_0"]


def test_bad_tags_and_incomplete_splits_are_one_clear_error():
    with pytest.raises(ModelNotFoundError, match="no GGUF file tagged Q2_K; it has: F16, Q4_K_M, Q6_K, Q8_0"):
        select_gguf(REPO, "Q2_K", "acme/glm-GGUF")
    with pytest.raises(ModelNotFoundError, match="split in 3 parts but the repository lists 2"):
        select_gguf(["m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00002-of-00003.gguf"], "Q4_K_M")
    with pytest.raises(ModelNotFoundError, match="no GGUF model files"):
        select_gguf(["README.md", "model.safetensors"], None, "acme/glm")
    with pytest.raises(ModelNotFoundError, match="several files tagged Q4_K_M"):
        select_gguf(["a-Q4_K_M.gguf", "b-Q4_K_M.gguf"], "Q4_K_M")


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory):
    pytest.importorskip("gguf", reason="needs the llamacpp extra")
    from autoglm.hub.demo import ensure_demo_model
    from autoglm.quantization.gguf import write_gguf

    root = tmp_path_factory.mktemp("src")
    return write_gguf(ensure_demo_model("autoglm-demo", root), root / "demo.gguf", "f32", progress=False)


@pytest.fixture()
def gguf_hub(demo_gguf):
    from tests.hub.conftest import serve_hub

    data = demo_gguf.read_bytes()
    files = {"README.md": b"# tiny GGUF repo\n", "tiny-glm-F32.gguf": data, "tiny-glm-Q4_K_M.gguf": b"\0" * 64}
    with serve_hub(files) as state:
        yield state


def test_only_the_tagged_file_is_downloaded_and_a_second_fetch_is_offline(gguf_hub, tmp_path):
    from autoglm.config import EngineSettings
    from autoglm.hub.gguf_repo import fetch_gguf

    settings = EngineSettings(model="acme/tiny-glm-GGUF:F32", store_dir=tmp_path, hf_endpoint=gguf_hub.url)
    path = fetch_gguf(parse_gguf_ref(settings.model), settings, progress=False)
    assert path.name == "tiny-glm-F32.gguf" and path.read_bytes() == gguf_hub.files["tiny-glm-F32.gguf"]
    assert gguf_hub.gets("tiny-glm-Q4_K_M.gguf") == []  # the other quantization never travels
    offline = EngineSettings(model=settings.model, store_dir=tmp_path, hf_endpoint="http://127.0.0.1:9", offline=True)
    assert fetch_gguf(parse_gguf_ref(settings.model), offline) == path
    with pytest.raises(ModelNotFoundError, match="offline"):
        fetch_gguf(parse_gguf_ref("acme/tiny-glm-GGUF:Q4_K_M"), offline)


def test_serve_a_hub_gguf_repo_by_tag_end_to_end(gguf_hub, autoglm_home, monkeypatch):
    """``autoglm serve --model org/repo:TAG``: the llama.cpp engine is chosen, the file is fetched, and the
    GGUF's own tokenizer and chat template answer the openai SDK (the demo's weights are random: noise)."""
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra")
    from openai import OpenAI

    from tests.conftest import _stop, start_live_server

    monkeypatch.setenv("HF_ENDPOINT", gguf_hub.url)
    server = start_live_server(autoglm_home, "acme/tiny-glm-GGUF:F32", "--max-num-seqs", "2")
    try:
        client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        chat = client.chat.completions.create(model="acme/tiny-glm-GGUF:F32", max_tokens=6, temperature=0,
                                              messages=[{"role": "user", "content": "hello"}],
                                              extra_body={"ignore_eos": True})
        assert chat.usage.completion_tokens == 6 and chat.choices[0].finish_reason == "length"
        assert "carries its own tokenizer" in server.log_tail(100_000)
    finally:
        _stop(server.process)


def test_a_gguf_repo_named_without_a_tag_says_how_to_name_it(gguf_hub, tmp_path):
    from autoglm.config import EngineSettings
    from autoglm.errors import DownloadError
    from autoglm.hub.resolve import resolve_model

    settings = EngineSettings(model="acme/tiny-glm-GGUF", store_dir=tmp_path, hf_endpoint=gguf_hub.url,
                              source="huggingface")
    with pytest.raises(DownloadError, match=r"holds GGUF files.*--model acme/tiny-glm-GGUF:TAG \(tags here: F32, Q4_K_M\)"):
        resolve_model("acme/tiny-glm-GGUF", settings, progress=False)


def test_the_store_lists_the_gguf_by_its_tag(gguf_hub, tmp_path):
    from autoglm.config import EngineSettings
    from autoglm.hub.gguf_repo import fetch_gguf
    from autoglm.hub.store import ModelStore

    settings = EngineSettings(store_dir=tmp_path, hf_endpoint=gguf_hub.url)
    fetch_gguf(parse_gguf_ref("acme/tiny-glm-GGUF:F32"), settings, progress=False)
    listed = {m.repo_id: m for m in ModelStore(tmp_path).list()}
    assert "acme/tiny-glm-GGUF:F32" in listed and listed["acme/tiny-glm-GGUF:F32"].complete
    assert ModelStore(tmp_path).remove("acme/tiny-glm-GGUF:F32") and not ModelStore(tmp_path).list()
