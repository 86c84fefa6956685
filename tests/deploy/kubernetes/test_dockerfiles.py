"""The manifests run the images deploy/docker/ builds: tag, entry point, port, health check, start period,
user. Parsed from the Dockerfiles, compared with the rendered objects (no Docker engine needed)."""
from __future__ import annotations

import json
import re
import shlex

import pytest

from autoglm.deploy.kubernetes import KubeOptions, render_kustomize
from autoglm.deploy.kubernetes.validate import load_docs
from autoglm.deploy.loader import load_deploy_file

from .conftest import EXAMPLES, ROOT


def _dockerfile(kind: str) -> dict:
    text = (ROOT / "deploy" / "docker" / f"Dockerfile.{kind}").read_text()
    lines = text.replace("\\\n", " ").splitlines()
    tag = re.search(rf"docker build -f deploy/docker/Dockerfile\.{kind} -t (\S+) \.", text).group(1)
    expose = [int(p) for ln in lines if ln.startswith("EXPOSE") for p in ln.split()[1:]]
    health = next(ln for ln in lines if ln.startswith("HEALTHCHECK"))
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", health)
    start = int(re.search(r"--start-period=(\d+)s", health).group(1))
    cmd = json.loads(next(ln for ln in lines if ln.startswith("CMD")).removeprefix("CMD").strip())
    user_line = next(ln for ln in lines if "useradd" in ln)
    uid = int(re.search(r"--uid (\d+)", user_line).group(1))
    home = re.search(r"AUTOGLM_HOME=(\S+)", text).group(1)
    return {"tag": tag, "expose": expose, "health_port": int(url.group(1)), "health_path": url.group(2),
            "start_period": start, "cmd": cmd, "uid": uid, "home": home}


@pytest.fixture(scope="module")
def objects():
    files = render_kustomize(load_deploy_file(EXAMPLES / "two-models.yaml"))
    out = {o: load_docs(files[f"overlays/{o}/models.yaml"]) for o in ("cpu", "cuda", "kserve-cpu", "kserve-cuda")}
    out["gateway"] = load_docs(files["base/gateway.yaml"])
    return out


def _pods(docs):
    for d in docs:
        if d["kind"] == "Deployment":
            yield d["spec"]["template"]["spec"]
        elif d["kind"] == "InferenceService":
            yield d["spec"]["predictor"]


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_model_pods_run_the_image_as_built(objects, kind):
    df = _dockerfile(kind)
    assert df["tag"] == getattr(KubeOptions(), f"image_{kind}")
    assert df["cmd"][0] == "autoglm" and df["cmd"][1] == "serve"
    port = int(df["cmd"][df["cmd"].index("--port") + 1])
    assert port in df["expose"] and df["health_port"] == port
    for overlay in (kind, f"kserve-{kind}"):
        for pod in _pods(objects[overlay]):
            c = pod["containers"][0]
            assert c["image"] == df["tag"]
            assert c["command"] == [df["cmd"][0]] and c["args"][0] == df["cmd"][1]
            assert c["args"][c["args"].index("--port") + 1] == str(port)
            assert [p["containerPort"] for p in c["ports"]] == [port]
            probe = c["readinessProbe"]["httpGet"]
            assert probe["path"] == df["health_path"] == "/health"
            port_name = c["ports"][0]["name"]
            assert probe["port"] == port_name and c["startupProbe"]["httpGet"]["port"] == port_name
            startup = c["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] == df["start_period"]
            assert pod["securityContext"]["runAsUser"] == df["uid"]
            assert {"mountPath": df["home"], "name": "data"} in c["volumeMounts"]
            assert {"name": "AUTOGLM_HOME", "value": df["home"]} in c["env"]
            if kind == "cuda":  # the CUDA image's own CMD insists on the GPU; so do the pods
                device = df["cmd"][df["cmd"].index("--device") + 1]
                assert c["args"][c["args"].index("--device") + 1] == "cuda" == device


def test_serve_arguments_parse_with_the_real_parser(objects):
    """Every argument a model pod passes is one `autoglm serve` accepts."""
    import argparse

    from autoglm.cli import serve

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    serve.register(sub)
    for overlay in ("cpu", "cuda", "kserve-cpu", "kserve-cuda"):
        for pod in _pods(objects[overlay]):
            args = pod["containers"][0]["args"]
            ns = parser.parse_args(args)
            assert ns.no_gateway and ns.api_key == "$(AUTOGLM_INTERNAL_KEY)"
            assert ns.host == "0.0.0.0"


def test_gateway_runs_the_cpu_image_on_the_same_port(objects):
    df = _dockerfile("cpu")
    dep = next(d for d in objects["gateway"] if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == df["tag"] and c["command"] == ["autoglm"] and c["args"][0] == "deploy"
    assert c["ports"][0]["containerPort"] in df["expose"]
    assert c["readinessProbe"]["httpGet"]["path"] == df["health_path"]
    svc = next(d for d in objects["gateway"] if d["kind"] == "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    assert shlex.join(c["args"]) == "deploy /etc/autoglm/deploy.yaml"
