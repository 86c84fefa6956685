"""Model names, the store layout and the name-resolution rules that need no network."""
from __future__ import annotations

import json

import pytest

from autoglm.cli.main import main
from autoglm.config import EngineSettings
from autoglm.errors import DownloadError, ModelNotFoundError
from autoglm.hub.download import select_files
from autoglm.hub.registry import list_models, resolve_name
from autoglm.hub.resolve import candidates_for, resolve_model
from autoglm.hub.store import ModelStore, repo_key


def test_aliases_map_to_repos_case_insensitively():
    spec = resolve_name("GLM-4-9B-Chat")
    assert spec is not None and spec.name == "glm-4-9b-chat"
    assert spec.hf_repo == "zai-org/glm-4-9b-chat-hf"
    assert spec.modelscope_repo == "ZhipuAI/glm-4-9b-chat-hf"
    assert resolve_name("zai-org/GLM-4-9B-0414").name == "glm-4-9b-0414"
    assert resolve_name(" glm-4-32b-0414 ").hf_repo == "zai-org/GLM-4-32B-0414"
    assert resolve_name("glm-4-32b-chat") is None  # there is no such model
    assert resolve_name("nope") is None


def test_architecture_numbers_support_offline_planning():
    chat = resolve_name("glm-4-9b-chat")
    assert (chat.hidden_size, chat.num_hidden_layers, chat.num_key_value_heads, chat.head_dim) == (4096, 40, 2, 128)
    assert 9.3e9 < chat.num_parameters < 9.5e9
    assert resolve_name("glm-4-9b-chat-1m").max_position_embeddings == 1048576
    assert 32.0e9 < resolve_name("glm-4-32b-0414").num_parameters < 33.0e9
    # 40 layers * 2 kv heads * 128 dims * (k and v) * 2 bytes
    assert chat.kv_bytes_per_token() == 40 * 2 * 128 * 2 * 2
    names = [s.name for s in list_models()]
    assert len(names) == len(set(names))
    assert {"glm-4-9b", "glm-z1-9b-0414", "autoglm-demo", "autoglm-demo-100m"} <= set(names)


def test_demo_models_are_marked_and_have_no_repo():
    demo = resolve_name("autoglm-demo")
    assert demo.is_demo and demo.source == "demo"
    assert demo.hf_repo is None and demo.modelscope_repo is None


def test_select_files_keeps_what_a_causal_lm_needs():
    names = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
             "flax_model.msgpack", "README.md", "original/model.safetensors", "chat_template.jinja"]
    picked = select_files(names)
    assert picked == sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                             "model.safetensors.index.json", "chat_template.jinja"])
    # No safetensors: fall back to the PyTorch weights.
    assert select_files(["config.json", "pytorch_model.bin", "README.md"]) == ["config.json", "pytorch_model.bin"]


def test_store_layout_marker_listing_and_removal(tmp_path):
    store = ModelStore(tmp_path)
    path = store.path_for("huggingface", "Org/Name", "refs/pr/1")
    assert path == tmp_path / "models" / "huggingface" / "Org--Name" / "refs--pr--1"
    assert repo_key("a/b") == "a--b"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"x" * 1000)
    [partial] = store.list()
    assert not partial.complete and partial.size_bytes == 1002
    assert store.find("Org/Name") is None  # a partial copy is never used
    store.mark_complete(path, repo_id="Org/Name", source="huggingface")
    [done] = store.list()
    assert done.complete and done.repo_id == "Org/Name" and done.size_bytes > 1002
    assert store.find("org/name").path == path
    assert store.find("org/name", revision="main") is None
    assert store.remove("org/name") == [path]
    assert not path.exists() and store.list() == []
    demo = tmp_path / "demo" / "autoglm-demo"  # where autoglm.hub.demo builds
    demo.mkdir(parents=True)
    (demo / "config.json").write_text("{}")
    [built] = store.list()
    assert (built.source, built.repo_id, built.complete, built.path) == ("demo", "autoglm-demo", True, demo)


def test_invalid_name_lists_aliases(tmp_path):
    settings = EngineSettings(store_dir=tmp_path, offline=True)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("not a/valid/name", settings)
    assert "'not a/valid/name'" in str(err.value) and "glm-4-9b-chat" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/dir", settings)


def test_local_directory_is_used_as_is(tmp_path):
    model = tmp_path / "my model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    resolved = resolve_model(str(model), EngineSettings(store_dir=tmp_path / "store", offline=True))
    assert resolved.path == model.resolve() and resolved.source == "local" and resolved.spec is None
    assert not (tmp_path / "store").exists()  # nothing copied
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"), EngineSettings(store_dir=tmp_path, offline=True))


def test_source_pin_and_candidates():
    spec = resolve_name("glm-4-9b-chat")
    assert [(c.source, c.repo_id) for c in candidates_for("glm-4-9b-chat", spec)] == [
        ("huggingface", "zai-org/glm-4-9b-chat-hf"), ("modelscope", "ZhipuAI/glm-4-9b-chat-hf")]
    assert [c.source for c in candidates_for("x", spec, "modelscope")] == ["modelscope"]
    assert [c.repo_id for c in candidates_for("acme/m", None)] == ["acme/m", "acme/m"]


def test_offline_with_empty_store_fails_with_guidance(tmp_path):
    with pytest.raises(DownloadError) as err:
        resolve_model("glm-4-9b-chat", EngineSettings(store_dir=tmp_path, offline=True))
    msg = str(err.value)
    assert "offline" in msg and "--model /path/to/model-dir" in msg and "AUTOGLM_HOME" in msg


def test_models_command_lists_aliases_and_store(tmp_path, capsys):
    store = ModelStore(tmp_path)
    path = store.path_for("modelscope", "ZhipuAI/glm-4-9b-chat-hf", "master")
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    store.mark_complete(path, repo_id="ZhipuAI/glm-4-9b-chat-hf")
    assert main(["models", "--store", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "glm-4-9b-chat " in text and "zai-org/glm-4-9b-chat-hf  [downloaded]" in text
    assert "RANDOM weights" in text and "ZhipuAI/glm-4-9b-chat-hf @ master" in text
    assert main(["models", "--json", "--store", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    known = {m["name"]: m for m in data["known"]}
    assert known["glm-4-9b-chat"]["downloaded"] and not known["glm-4-9b"]["downloaded"]
    assert known["autoglm-demo"]["random_weights"] is True
    assert data["local"][0]["complete"] is True


def test_glm45_family_aliases_carry_the_moe_numbers(capsys):
    air = resolve_name("GLM-4.5-Air")
    assert air.name == "glm-4.5-air" and air.hf_repo == "zai-org/GLM-4.5-Air" and air.is_moe
    assert resolve_name("zai-org/GLM-4.6").name == "glm-4.6"
    assert (air.architecture, air.n_routed_experts, air.num_experts_per_tok, air.n_shared_experts,
            air.first_k_dense_replace, air.moe_intermediate_size) == ("Glm4MoeForCausalLM", 128, 8, 1, 1, 1408)
    big, six = resolve_name("glm-4.5"), resolve_name("glm-4.6")
    assert (big.num_hidden_layers, big.n_routed_experts, big.first_k_dense_replace,
            big.use_qk_norm) == (92, 160, 3, True)
    assert 350e9 < big.num_parameters < 356e9 and 105e9 < air.num_parameters < 108e9
    assert air.num_active_parameters < air.num_parameters / 7
    assert six.num_parameters == big.num_parameters and six.max_position_embeddings == 202752
    # the dense families say which transformers class they are, and are not MoE
    assert resolve_name("glm-4-9b-chat").architecture == "GlmForCausalLM" and not resolve_name("glm-4-9b-chat").is_moe
    assert resolve_name("glm-z1-9b-0414").architecture == "Glm4ForCausalLM"
    assert resolve_name("glm-4-9b-chat").config_dict()["model_type"] == "glm"
    assert air.config_dict()["model_type"] == "glm4_moe"

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for line in ("glm-4.5 ", "glm-4.5-air ", "glm-4.6 ", "autoglm-demo-moe "):
        assert line in text
    assert main(["plan", "glm-4.5-air", "--device", "cuda", "--free-gb", "240"]) == 0
    out = capsys.readouterr().out
    assert "alias registry (zai-org/GLM-4.5-Air)" in out and "mixture of experts" in out and "chose bf16" in out


def test_moe_demo_spec_is_filled_from_the_builder():
    from autoglm.hub.demo import demo_config
    from autoglm.quantization import ModelArch

    spec = resolve_name("autoglm-demo-moe")
    assert spec.is_demo and spec.is_moe and spec.n_routed_experts == 8 and spec.num_experts_per_tok == 2
    assert spec.num_parameters == ModelArch.from_config(demo_config("autoglm-demo-moe")).num_parameters
    assert spec.num_active_parameters < spec.num_parameters
    dense = resolve_name("autoglm-demo")
    assert dense.n_routed_experts is None and dense.num_active_parameters is None  # dense demos unchanged
