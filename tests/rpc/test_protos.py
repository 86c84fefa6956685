"""The generated gRPC modules are current, and the request translation keeps every sampling field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import autoglm

pytest.importorskip("grpc")

from autoglm.rpc.protos import generate_pb2  # noqa: E402
from autoglm.rpc.server import SAMPLING_FIELDS, generate_body, status_for_http  # noqa: E402

SRC = Path(autoglm.__file__).resolve().parent.parent
PROTOS = sorted((SRC / "autoglm" / "rpc" / "protos").glob("*.proto"))


def test_generated_modules_match_the_protos(tmp_path):
    pytest.importorskip("grpc_tools")
    rel = [str(p.relative_to(SRC)) for p in PROTOS]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(SRC), f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *rel], check=True, cwd=SRC)
    generated = sorted(tmp_path.rglob("*_pb2*.py*"))
    assert len(generated) == 3 * len(PROTOS)
    for new in generated:
        committed = SRC / new.relative_to(tmp_path)
        assert committed.read_text() == new.read_text(), f"{committed} is stale: regenerate it (see autoglm.rpc)"


def test_every_sampling_field_reaches_the_http_body():
    params = generate_pb2.SamplingParams(max_tokens=3, temperature=0.5, top_p=0.9, stop=["a", "b"], seed=11,
                                         presence_penalty=0.1, frequency_penalty=0.2, top_k=4, min_p=0.05,
                                         repetition_penalty=1.1, ignore_eos=True, stop_token_ids=[5])
    path, body = generate_body(generate_pb2.GenerateRequest(model="m", prompt="p", params=params, include_usage=True))
    assert path == "/v1/completions" and body["prompt"] == "p" and body["stream"] is True
    assert set(SAMPLING_FIELDS) <= set(body)
    assert body["stop"] == ["a", "b"] and body["seed"] == 11 and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == pytest.approx(0.5)


def test_unset_fields_stay_server_defaults():
    chat = generate_pb2.Messages(messages=[generate_pb2.ChatMessage(role="user", content="hi")])
    path, body = generate_body(generate_pb2.GenerateRequest(chat=chat))
    assert path == "/v1/chat/completions"
    assert body == {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
    # temperature 0.0 explicitly set is kept (proto3 optional tells it from unset)
    _, greedy = generate_body(generate_pb2.GenerateRequest(prompt="p", params=generate_pb2.SamplingParams(temperature=0)))
    assert greedy["temperature"] == 0.0
    assert generate_body(generate_pb2.GenerateRequest())[0] == ""


def test_http_statuses_map_to_grpc_codes():
    assert [status_for_http(s) for s in (400, 401, 403, 404, 429, 503, 500)] == [
        "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED",
        "UNAVAILABLE", "INTERNAL"]
