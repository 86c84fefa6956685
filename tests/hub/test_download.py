"""Downloads against a real local hub server (tests/hub/conftest.py) with the real clients."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from autoglm.cli.main import main
from autoglm.config import EngineSettings
from autoglm.errors import DownloadError
from autoglm.hub.download import download_modelscope, select_files
from autoglm.hub.resolve import resolve_model
from autoglm.hub.store import COMPLETE_MARKER, ModelStore

WEIGHTS = "model.safetensors"


@pytest.fixture()
def endpoints(monkeypatch):
    def point(hf: str, ms: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", hf)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms)

    return point


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(tmp_path, **kw) -> EngineSettings:
    return EngineSettings(store_dir=tmp_path / "store", offline=False, **kw)


def test_pull_alias_from_huggingface_endpoint_and_load(hub, endpoints, dead_url, tmp_path):
    endpoints(hub.url, dead_url)
    resolved = resolve_model("glm-4-9b-chat", _settings(tmp_path), progress=False)
    assert resolved.source == "huggingface" and resolved.spec.name == "glm-4-9b-chat"
    assert resolved.path == ModelStore(tmp_path / "store").path_for("huggingface", "zai-org/glm-4-9b-chat-hf", "main")
    wanted = select_files(list(hub.files))
    got = sorted(p.name for p in resolved.path.iterdir() if p.is_file() and not p.name.startswith("."))
    assert got == wanted and "pytorch_model.bin" not in got and "README.md" not in got
    assert _sha(resolved.path / WEIGHTS) == hub.sha256(WEIGHTS)
    assert (resolved.path / COMPLETE_MARKER).is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tok = AutoTokenizer.from_pretrained(resolved.path)
    assert model.config.hidden_size == 64 and len(tok("the quick fox")["input_ids"]) > 0

    # Second resolve: the store answers, nothing is fetched again.
    before = len(hub.requests)
    assert resolve_model("GLM-4-9B-CHAT", _settings(tmp_path), progress=False).path == resolved.path
    assert len(hub.requests) == before


def test_huggingface_resumes_a_cut_download(hub, endpoints, dead_url, tmp_path):
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole chunk: use a 24 MiB shard.
    big = "model-extra.safetensors"
    hub.files[big] = os.urandom(24 << 20)
    endpoints(hub.url, dead_url)
    hub.cut_once.add(big)
    resolved = resolve_model("acme/tiny-glm", _settings(tmp_path), progress=False)
    first, second = hub.gets(big)
    assert first is None and second == f"bytes={10 << 20}-"  # continued after the part that arrived
    assert _sha(resolved.path / big) == hub.sha256(big)
    assert _sha(resolved.path / WEIGHTS) == hub.sha256(WEIGHTS)


def test_modelscope_fallback_and_resume_across_runs(hub, endpoints, dead_url, tmp_path):
    endpoints(dead_url, hub.url)  # Hugging Face unreachable: ModelScope must serve it
    store = ModelStore(tmp_path / "store")
    target = store.path_for("modelscope", "acme/tiny-glm", "master")
    hub.cut_once.add(WEIGHTS)
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_modelscope("acme/tiny-glm", target, endpoint=hub.url, progress=False, retries=0)
    part = target / (WEIGHTS + ".part")
    half = len(hub.files[WEIGHTS]) // 2
    assert part.stat().st_size == half and not store.is_complete(target)

    resolved = resolve_model("acme/tiny-glm", _settings(tmp_path), progress=False)
    assert resolved.source == "modelscope" and resolved.path == target
    assert hub.gets(WEIGHTS) == [None, f"bytes={half}-"]
    assert _sha(target / WEIGHTS) == hub.sha256(WEIGHTS) and not part.exists()
    assert (target / "config.json").is_file() and not (target / "pytorch_model.bin").exists()
    assert store.read_marker(target)["source"] == "modelscope"


def test_offline_uses_the_store_and_never_connects(hub, endpoints, tmp_path):
    endpoints(hub.url, hub.url)
    pulled = resolve_model("glm-4-9b-chat", _settings(tmp_path, source="modelscope"), progress=False)
    assert pulled.source == "modelscope"
    before = len(hub.requests)
    offline = EngineSettings(store_dir=tmp_path / "store", offline=True)
    assert resolve_model("glm-4-9b-chat", offline).path == pulled.path
    assert resolve_model("ZhipuAI/glm-4-9b-chat-hf", offline).path == pulled.path
    with pytest.raises(DownloadError, match="offline"):
        resolve_model("acme/tiny-glm", offline)
    assert len(hub.requests) == before


def test_missing_and_unreachable_is_one_clear_error(endpoints, dead_url, tmp_path):
    endpoints(dead_url, dead_url + "/ms")
    with pytest.raises(DownloadError) as err:
        resolve_model("glm-4-9b-chat", _settings(tmp_path), progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"huggingface zai-org/glm-4-9b-chat-hf at {dead_url}" in msg
    assert f"modelscope ZhipuAI/glm-4-9b-chat-hf at {dead_url}/ms" in msg
    assert "--model /path/to/model-dir" in msg and "autoglm pull glm-4-9b-chat" in msg


def test_unknown_repo_names_the_reason(hub, endpoints, tmp_path):
    endpoints(hub.url, hub.url)
    with pytest.raises(DownloadError) as err:
        resolve_model("acme/missing", _settings(tmp_path), progress=False)
    assert "RepositoryNotFoundError" in str(err.value) and "not found (HTTP 404)" in str(err.value)


def test_pull_command_prints_where_it_landed(hub, endpoints, dead_url, tmp_path, capsys):
    endpoints(dead_url, hub.url)
    rc = main(["pull", "glm-4-9b-chat", "--source", "modelscope", "--store", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    expected = ModelStore(tmp_path).path_for("modelscope", "ZhipuAI/glm-4-9b-chat-hf", "master")
    assert rc == 0 and out.strip() == f"glm-4-9b-chat: modelscope -> {expected}"


def test_pull_subprocess_fails_with_one_line(dead_url, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": dead_url, "MODELSCOPE_ENDPOINT": dead_url, "AUTOGLM_HOME": str(tmp_path)}
    env.pop("AUTOGLM_OFFLINE", None)
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "autoglm", "pull", "glm-4-9b", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'glm-4-9b' is not in the local store")
    assert "Traceback" not in proc.stderr and str(tmp_path) in lines[0]
