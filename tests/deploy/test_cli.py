"""``autoglm deploy`` as a user runs it: a subprocess, dry-run plan, one-line errors, new keys once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autoglm.deploy.loader import parse_deploy_text
from autoglm.deploy.runner import build_router, ensure_keys, gateway_settings, plan_lines

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def autoglm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("models:\n- name: local-a\n  aliases: [a]\n  replicas: 2\n- name: remote-b\n  upstream:\n"
                 "    url: http://127.0.0.1:9\n    api_key: ${DEPLOY_TEST_KEY}\n  fallback: a\n"
                 "server:\n  port: 8999\n")
    r = autoglm("deploy", str(f), "--dry-run", "--port", "9001", env={"DEPLOY_TEST_KEY": "sk-never-print-me"})
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout and "http://127.0.0.1:9001/v1" in r.stdout
    assert "model local-a (aliases: a): local local-a x2 replica(s)" in r.stdout
    assert "remote http://127.0.0.1:9 as 'remote-b', api key set" in r.stdout
    assert "sk-never-print-me" not in r.stdout + r.stderr


def test_bad_file_is_one_error_line_without_traceback(tmp_path):
    f = tmp_path / "autoglm.yaml"
    f.write_text("models:\n- name: a\n- name: b\n  quantize: int3\n")
    r = autoglm("deploy", str(f), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {f}:4 models[1].quantize: expected one of auto, none, fp32, fp16, bf16, "
                                "int8, int4; got 'int3'")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_example_dry_runs():
    r = autoglm("deploy", str(EXAMPLES / "remote-upstream.yaml"), "--dry-run", env={"GPU_BOX_KEY": "k"})
    assert r.returncode == 0, r.stderr
    assert "fallback: autoglm-demo" in r.stdout


def test_ensure_keys_creates_missing_keys_once(tmp_path):
    cfg = parse_deploy_text(f"models:\n- name: a\ngateway:\n  state_store: {tmp_path / 'state.db'}\n"
                            "  keys:\n  - name: app\n    rpm: 5\n  - name: ci\n")
    gw = gateway_settings(cfg)
    first = ensure_keys(cfg, gw)
    assert [n for n, _ in first] == ["app", "ci"] and all(k.startswith("agl-") for _, k in first)
    assert ensure_keys(cfg, gw) == []  # already there: nothing new, nothing printed
    from autoglm.gateway import keys as keys_mod
    from autoglm.gateway.store import open_store

    with open_store(gw.store_url) as store:
        info = keys_mod.verify(store, first[0][1])
        assert info is not None and info.name == "app" and info.rpm == 5
    assert first[0][1] not in (tmp_path / "state.db").read_bytes().decode("latin-1")  # only the hash


def test_router_from_config_has_replicas_and_upstreams():
    cfg = parse_deploy_text("models:\n- name: a\n  replicas: 3\n  max_concurrency: 4\n- name: r\n  upstream:\n"
                            "    urls: [http://h1:1, http://h2:2/v1]\n    model: theirs\n  fallback: a\n")
    router = build_router(cfg)
    a, r = router.routes
    assert [b.label for b in a.backends] == ["a#0", "a#1", "a#2"]
    assert all(b.engine is not a.backends[0].engine for b in a.backends[1:])  # one engine per replica
    assert [b.upstream.base_url for b in r.backends] == ["http://h1:1/v1", "http://h2:2/v1"]
    assert r.backends[0].upstream.model == "theirs" and r.fallback == "a"
    assert gateway_settings(cfg).model_concurrency == {"a": 4}
    assert any("health check every" in line for line in plan_lines(cfg))


def test_serve_config_validates_the_same_way(tmp_path):
    f = tmp_path / "autoglm.yaml"
    f.write_text("models:\n- name: a\n  replicass: 2\n")
    r = autoglm("serve", "--config", str(f))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {f}:3 models[0].replicass: unknown key 'replicass'; did you mean 'replicas'?")
