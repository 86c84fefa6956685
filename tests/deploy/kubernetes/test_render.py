"""``autoglm deploy FILE --to kubernetes``: the tree renders with kubectl kustomize, every object validates
against the Kubernetes and CRD schemas, and what the objects say follows the deploy file and the planner."""
from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import yaml

from autoglm.deploy.kubernetes import OVERLAYS, KubeOptions, render_kustomize
from autoglm.deploy.kubernetes.gateway_file import gateway_deploy_file
from autoglm.deploy.kubernetes.render import find_assets
from autoglm.deploy.kubernetes.sizing import CPU, CUDA, registry_arch, size_model
from autoglm.deploy.kubernetes.validate import kustomize_build, load_docs, validate_object, validate_objects
from autoglm.deploy.loader import load_deploy_file, parse_deploy_text
from autoglm.errors import ConfigError
from autoglm.quantization.device import DeviceInfo
from autoglm.quantization.planner import plan_precision

from .conftest import EXAMPLES, ROOT, autoglm, needs_kubectl


@pytest.fixture(scope="module")
def built(two_models_tree):
    """Every overlay of the two-models tree, rendered by kubectl kustomize."""
    if shutil.which("kubectl") is None and shutil.which("kustomize") is None:
        pytest.skip("kubectl (or kustomize) is not installed")
    return {o: kustomize_build(two_models_tree / "overlays" / o) for o in OVERLAYS}


def _cpu_device():
    return DeviceInfo(kind="cpu", name="pod", total_bytes=32 * 2**30, free_bytes=32 * 2**30)


def _by(objs, kind, name=None):
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


@needs_kubectl
def test_every_overlay_renders_and_validates(built):
    for overlay, objs in built.items():
        assert validate_objects(objs) == [], overlay
        kinds = {o["kind"] for o in objs}
        assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "PodMonitor",
                "ServiceMonitor", "PrometheusRule"} <= kinds, overlay
        assert all(o["metadata"].get("namespace") == "autoglm" for o in objs if o["kind"] != "Namespace"), overlay
        models = _by(objs, "InferenceService") if overlay.startswith("kserve") else _by(objs, "ScaledObject")
        assert sorted(o["metadata"]["name"] for o in models) == ["autoglm-demo", "demo-long"], overlay


def test_validation_reports_what_the_api_server_would_refuse(two_models_tree):
    docs = load_docs((two_models_tree / "overlays/cpu/models.yaml").read_text())
    docs += load_docs((two_models_tree / "overlays/kserve-cuda/models.yaml").read_text())
    assert validate_objects(docs) == []
    dep = copy.deepcopy(_by(docs, "Deployment", "demo-long")[0])
    dep["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # misspelt: would be pruned
    assert "readinessprobe" in " ".join(validate_object(dep))
    isvc = copy.deepcopy(_by(docs, "InferenceService", "demo-long")[0])
    isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    assert "resources.limits.memory" in " ".join(validate_object(isvc))
    so = copy.deepcopy(_by(docs, "ScaledObject", "demo-long")[0])
    del so["spec"]["scaleTargetRef"]
    assert "scaleTargetRef" in " ".join(validate_object(so))


@needs_kubectl
def test_resources_come_from_the_planner(built):
    config = load_deploy_file(EXAMPLES / "two-models.yaml")
    for overlay, target in (("cpu", CPU), ("cuda", CUDA), ("kserve-cuda", CUDA)):
        for model in config.models:
            sizing = size_model(model, target)
            objs = built[overlay]
            if overlay.startswith("kserve"):
                pod = _by(objs, "InferenceService", model.name)[0]["spec"]["predictor"]
            else:
                pod = _by(objs, "Deployment", model.name)[0]["spec"]["template"]["spec"]
            c = pod["containers"][0]
            assert c["resources"] == sizing.resources()
            args = c["args"]
            assert args[args.index("--quantize") + 1] == sizing.precision
            assert args[args.index("--max-num-seqs") + 1] == str(sizing.max_num_seqs)
            assert args[args.index("--device") + 1] == target.kind
            if target.kind == "cuda":
                assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
                term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                mib = int(term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]) + 1
                assert mib * 2**20 >= sizing.gpu_memory
            else:
                assert "nvidia.com/gpu" not in c["resources"]["limits"]
                # the pod's RAM holds the whole plan: weights + KV cache + overhead (or the loading peak)
                plan = plan_precision(registry_arch(model.model_source), _cpu_device(), model.quantize,
                                      max_model_len=model.max_model_len, max_num_seqs=model.max_num_seqs,
                                      extra_kv_tokens=model.prefix_cache_tokens)
                need = max(plan.chosen.total_bytes, plan.chosen.peak_bytes)
                assert need <= sizing.memory_request < need + 256 * 2**20
                assert sizing.memory_limit >= sizing.memory_request / 0.9


def test_a_model_no_gpu_holds_is_one_error_line(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("models:\n  - name: glm-4.5-air\n")  # 106B parameters, the routed experts stay 16-bit
    r = autoglm("deploy", str(f), "--to", "kubernetes", "--out", str(tmp_path / "out"), "--gpu-memory-gb", "80",
                "--cpu-memory-gb", "2048")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "'glm-4.5-air' on cuda" in r.stderr and "does not fit" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
    r = autoglm("deploy", str(f), "--to", "kubernetes", "--out", str(tmp_path / "out2"), "--gpu-memory-gb", "800",
                "--cpu-memory-gb", "2048")
    assert r.returncode == 0, r.stderr  # on a larger GPU it fits


@needs_kubectl
def test_graceful_termination_matches_shutdown_grace(built, tmp_path):
    for objs in built.values():
        for dep in _by(objs, "Deployment"):
            spec = dep["spec"]["template"]["spec"]
            c = spec["containers"][0]
            assert spec["terminationGracePeriodSeconds"] == 5 + 30 + 5 + 5  # preStop + grace + uvicorn + exit
            assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/health"
            assert "tcpSocket" in c["livenessProbe"]  # /health is 503 while draining: not a reason to restart
    f = tmp_path / "slow.yaml"
    f.write_text("models:\n  - name: autoglm-demo\nserver:\n  shutdown_grace: 90\n")
    files = render_kustomize(load_deploy_file(f))
    dep = load_docs(files["overlays/cpu/models.yaml"])[0]
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 105
    assert spec["containers"][0]["args"][spec["containers"][0]["args"].index("--shutdown-grace") + 1] == "90"


@needs_kubectl
def test_autoscaling_targets_follow_the_planners_batch(built):
    config = load_deploy_file(EXAMPLES / "two-models.yaml")
    for model in config.models:
        sizing = size_model(model, CPU)
        so = _by(built["cpu"], "ScaledObject", model.name)[0]["spec"]
        assert so["minReplicaCount"] == model.replicas and so["maxReplicaCount"] == max(4, 4 * model.replicas)
        triggers = {t["name"]: t for t in so["triggers"]}
        assert set(triggers) == {"waiting", "kv-cache", "tokens"}
        assert triggers["waiting"]["metadata"]["threshold"] == str(math.ceil(sizing.max_num_seqs / 2))
        assert triggers["kv-cache"]["metadata"]["threshold"] == "0.8"
        assert triggers["tokens"]["metadata"]["threshold"] == str(sizing.scale.tokens_per_s_per_replica)
        for t in triggers.values():
            assert t["metricType"] == "AverageValue"
            assert f'model_name="{model.name}"' in t["metadata"]["query"]
            assert 'namespace="autoglm"' in t["metadata"]["query"]
        isvc = _by(built["kserve-cpu"], "InferenceService", model.name)[0]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
        metrics = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
        assert [m["external"]["metric"]["query"] for m in metrics] == [t["metadata"]["query"]
                                                                      for t in so["triggers"]]
    # demo-long allows 2 sequences, autoglm-demo 8: the queue target follows
    waiting = {m.name: size_model(m, CPU).scale.waiting_per_replica for m in config.models}
    assert waiting == {"autoglm-demo": 4, "demo-long": 1}


def test_no_secret_reaches_the_output(tmp_path, monkeypatch):
    values = {"DK_ADMIN": "adm-6f1c9e", "DK_PEPPER": "pep-83b2aa", "DK_UP": "sk-up-77d1f0", "DK_STATIC": "st-5e0c44",
              "DK_PG": "postgresql://u:pg-pass-9a1b@db:5432/x", "DK_REDIS": "redis://:rd-pass-3c2d@r:6379/0"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    f = tmp_path / "secrets.yaml"
    f.write_text("models:\n  - name: autoglm-demo\n  - name: remote\n    upstream:\n      url: http://10.0.0.5:8000/v1\n"
                 "      api_key: ${DK_UP}\n"
                 "gateway:\n  admin_key: ${DK_ADMIN}\n  key_pepper: ${DK_PEPPER}\n  state_store: ${DK_PG}\n"
                 "  redis_url: ${DK_REDIS}\nserver:\n  api_keys:\n    - ${DK_STATIC}\n")
    files = render_kustomize(load_deploy_file(f))
    text = "\n".join(files.values())
    for v in values.values():
        assert v not in text
    for secret in ("pg-pass-9a1b", "rd-pass-3c2d"):
        assert secret not in text
    gateway = load_docs(files["base/gateway.yaml"])[0]
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in ("AUTOGLM_ADMIN_KEY", "AUTOGLM_KEY_PEPPER", "AUTOGLM_STATE_URL", "AUTOGLM_REDIS_URL",
                "AUTOGLM_UPSTREAM_REMOTE_KEY", "AUTOGLM_API_KEY_0", "AUTOGLM_INTERNAL_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "autoglm-secrets", var
        assert "value" not in env[var]


def test_the_gateways_file_is_a_valid_deploy_file_pointing_at_the_model_services(two_models_tree, monkeypatch):
    for var, value in (("AUTOGLM_ADMIN_KEY", "a"), ("AUTOGLM_INTERNAL_KEY", "i"),
                       ("AUTOGLM_STATE_URL", "postgresql://x@db/a"), ("AUTOGLM_REDIS_URL", "redis://r:6379/0")):
        monkeypatch.setenv(var, value)
    for overlay_file, suffix in (("base/gateway-deploy.yaml", ":8000/v1"),
                                 ("overlays/kserve-cpu/gateway-deploy.yaml", "-predictor/v1")):
        config = parse_deploy_text((two_models_tree / overlay_file).read_text(), overlay_file)
        assert [m.name for m in config.models] == ["autoglm-demo", "demo-long"]
        first, second = config.models
        assert first.aliases == ["demo", "default"] and first.fallback == "demo-long"
        assert first.upstream.url == f"http://autoglm-demo{suffix}"
        assert second.upstream.url == f"http://demo-long{suffix}"
        assert first.upstream.api_key.get_secret_value() == "i"
        assert config.gateway.cache.backend == "redis" and config.gateway.rate_limits.backend == "redis"
        assert config.gateway.state_store == "postgresql://x@db/a"
        assert config.server.host == "0.0.0.0"
    readme = (two_models_tree / "README.md").read_text()
    assert "autoglm keys create --name app --models autoglm-demo,demo-long --rpm 600" in readme


def test_dashboard_and_alerts_are_read_at_render_time(tmp_path):
    repo = find_assets()
    assert repo == ROOT / "deploy"
    config = load_deploy_file(EXAMPLES / "demo.yaml")
    files = render_kustomize(config)
    assert files["base/grafana/autoglm-dashboard.json"] == (repo / "grafana/autoglm-dashboard.json").read_text()
    rule = next(d for d in load_docs(files["base/monitoring.yaml"]) if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((repo / "prometheus/alerts.yml").read_text())["groups"]
    # another copy of the assets, changed: the tree follows
    assets = tmp_path / "deploy"
    shutil.copytree(repo / "grafana", assets / "grafana")
    shutil.copytree(repo / "prometheus", assets / "prometheus")
    dash = json.loads((assets / "grafana/autoglm-dashboard.json").read_text())
    dash["title"] = "changed"
    (assets / "grafana/autoglm-dashboard.json").write_text(json.dumps(dash))
    files = render_kustomize(config, KubeOptions(assets=assets))
    assert json.loads(files["base/grafana/autoglm-dashboard.json"])["title"] == "changed"


def test_gateway_file_keeps_remote_upstreams_remote():
    config = parse_deploy_text("models:\n  - name: local\n  - name: far\n    upstream:\n"
                               "      urls: [http://a:1/v1, http://b:1/v1]\n      model: big\n")
    doc, env = gateway_deploy_file(config, {"local": "http://local:8000/v1"})
    assert doc["models"][1]["upstream"]["urls"] == ["http://a:1/v1", "http://b:1/v1"]
    assert doc["models"][1]["upstream"]["model"] == "big"
    assert "api_key" not in doc["models"][1]["upstream"]
    assert not any(e.env.startswith("AUTOGLM_UPSTREAM_") for e in env)


def test_names_that_collide_in_kubernetes_are_refused():
    config = parse_deploy_text("models:\n  - name: Demo_A\n  - name: demo-a\n")
    with pytest.raises(ConfigError, match="demo-a"):
        render_kustomize(config)
