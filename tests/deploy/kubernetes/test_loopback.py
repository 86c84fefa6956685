"""The rendered pods' contract, run on loopback: a model pod started with exactly its manifest's arguments,
the gateway with exactly its generated deploy file (only the addresses changed), the official SDK through
the gateway, the internal key enforced, and the series the autoscaler queries present in the scrape."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from autoglm.deploy.kubernetes import render_kustomize
from autoglm.deploy.kubernetes.validate import load_docs
from autoglm.deploy.loader import parse_deploy_text
from tests.conftest import wait_healthy

INTERNAL = "internal-key-for-the-test"
ADMIN = "admin-key-for-the-test"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path, url: str) -> subprocess.Popen:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    wait_healthy(proc, url, log, what=cmd[3], timeout=150)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=20)


def test_model_pod_and_gateway_as_rendered(tmp_path, autoglm_home):
    import openai

    deploy = parse_deploy_text("models:\n  - name: autoglm-demo\n    aliases: [demo]\n    max_num_seqs: 4\n"
                               "server:\n  shutdown_grace: 3\n")
    files = render_kustomize(deploy)
    dep = next(d for d in load_docs(files["overlays/cpu/models.yaml"]) if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    args = list(pod["containers"][0]["args"])
    scaled = next(d for d in load_docs(files["overlays/cpu/models.yaml"]) if d["kind"] == "ScaledObject")

    model_port, gw_port = _free_port(), _free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(model_port)
    args = [a.replace("$(AUTOGLM_INTERNAL_KEY)", INTERNAL) for a in args]  # what the kubelet expands
    env = {**os.environ, "AUTOGLM_HOME": str(autoglm_home), "PYTHONUNBUFFERED": "1"}
    model_url = f"http://127.0.0.1:{model_port}"
    model = _start([sys.executable, "-m", "autoglm", *args], env, tmp_path / "model.log", model_url)
    gateway = None
    try:
        text = files["base/gateway-deploy.yaml"].replace("http://autoglm-demo:8000/v1", f"{model_url}/v1")
        (tmp_path / "deploy.yaml").write_text(text)
        secrets = {"AUTOGLM_ADMIN_KEY": ADMIN, "AUTOGLM_INTERNAL_KEY": INTERNAL,
                   "AUTOGLM_STATE_URL": str(tmp_path / "state.db"), "AUTOGLM_REDIS_URL": "redis://127.0.0.1:6379/15",
                   "AUTOGLM_HOME": str(tmp_path / "gw-home")}
        gw_url = f"http://127.0.0.1:{gw_port}"
        gateway = _start([sys.executable, "-m", "autoglm", "deploy", str(tmp_path / "deploy.yaml"), "--host",
                          "127.0.0.1", "--port", str(gw_port)], {**env, **secrets}, tmp_path / "gateway.log", gw_url)

        # what the tree's README has run in the gateway pod (`autoglm keys create`), on the same state store
        from autoglm.gateway import keys as keys_mod
        from autoglm.gateway.store import open_store

        with open_store(secrets["AUTOGLM_STATE_URL"]) as store:
            key, _ = keys_mod.create_key(store, "app")
        client = openai.OpenAI(base_url=gw_url + "/v1", api_key=key, max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw_url + "/v1", api_key="agl-wrong", max_retries=0).models.list()
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=5, temperature=1.0,  # not from a shared cache
                                               extra_headers={"Cache-Control": "no-cache"})
        assert reply.model == "autoglm-demo" and reply.usage.completion_tokens > 0

        # the model pod answers only the gateway's key
        body = {"model": "autoglm-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(model_url + "/v1/chat/completions", json=body, timeout=30).status_code == 401
        assert httpx.get(model_url + "/metrics", timeout=10).status_code == 401
        scrape = httpx.get(model_url + "/metrics", headers={"Authorization": f"Bearer {INTERNAL}"}, timeout=10)
        assert scrape.status_code == 200
        # every series the autoscaler asks for exists with the model_name the query filters on
        for trigger in scaled["spec"]["triggers"]:
            metric = re.search(r"(autoglm:[a-z_]+)\{", trigger["metadata"]["query"]).group(1)
            assert re.search(rf'^{re.escape(metric)}\{{[^}}]*model_name="autoglm-demo"', scrape.text, re.M), metric
        tokens = re.search(r'^autoglm:generation_tokens_total\{model_name="autoglm-demo"\} (\S+)', scrape.text, re.M)
        assert float(tokens.group(1)) >= reply.usage.completion_tokens

        # SIGTERM (after the preStop hook): the pod drains and exits 0 well inside its grace period
        started = time.monotonic()
        model.send_signal(signal.SIGTERM)
        assert model.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0
        assert time.monotonic() - started < pod["terminationGracePeriodSeconds"]
    finally:
        _stop(model)
        if gateway is not None:
            _stop(gateway)
    assert yaml.safe_load(text)["models"][0]["upstream"]["api_key"] == "${AUTOGLM_INTERNAL_KEY}"
