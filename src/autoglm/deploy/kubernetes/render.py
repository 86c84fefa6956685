"""A deploy file as a kustomize tree: ``base/`` plus four overlays, as ``{relative path: text}``.

:func:`render_kustomize` is what ``autoglm deploy FILE --to kubernetes`` writes (:func:`write_tree`)::

    base/            Namespace, the gateway (Deployment, Service, PodDisruptionBudget, its deploy file), monitoring
                     (PodMonitor for the model pods, ServiceMonitor for the gateway, PrometheusRule, and
                     the Grafana dashboard and alert rules as ConfigMaps)
    overlays/cpu/          one Deployment + Service + PDB + KEDA ScaledObject per local model, CPU image
    overlays/cuda/         the same on one GPU per pod, CUDA image
    overlays/kserve-cpu/   one KServe InferenceService per local model (our image as the predictor)
    overlays/kserve-cuda/
    README.md        the Secret to create, the keys to create, how to apply

The gateway's deploy file (:mod:`~autoglm.deploy.kubernetes.gateway_file`) is a ``configMapGenerator``
in the base (its hash in the name rolls the gateway when the file changes) pointing at
``http://<model>:8000/v1``; the KServe overlays replace it with one pointing at the predictor Services.
Pod sizes, precisions and autoscaling targets come from :mod:`~autoglm.deploy.kubernetes.sizing`.

The dashboard and the alert rules are read from the repository's ``deploy/grafana`` and
``deploy/prometheus`` at render time (:func:`find_assets`), so the tree always carries the current
ones. No secret appears in any output. Knows kustomize's file layout; not how to apply it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoglm.deploy.kubernetes import objects as k
from autoglm.deploy.kubernetes.gateway_file import SECRET_NAME, gateway_deploy_file, key_commands
from autoglm.deploy.kubernetes.sizing import Sizing, Target, registry_arch, size_model
from autoglm.deploy.schema import DeployConfig
from autoglm.errors import ConfigError

__all__ = ["KubeOptions", "OVERLAYS", "render_kustomize", "write_tree", "find_assets", "workload_name",
           "DASHBOARD", "ALERTS", "dump_yaml"]

OVERLAYS = ("cpu", "cuda", "kserve-cpu", "kserve-cuda")
DASHBOARD = "grafana/autoglm-dashboard.json"
ALERTS = "prometheus/alerts.yml"
_KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}


@dataclass(frozen=True)
class KubeOptions:
    namespace: str = "autoglm"
    image_cpu: str = "autoglm:cpu"  # docker build -f deploy/docker/Dockerfile.cpu -t autoglm:cpu .
    image_cuda: str = "autoglm:cuda"
    gateway_replicas: int = 2
    max_replicas: int | None = None  # per model; default max(4, 4 x replicas)
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    cpu: Target = field(default_factory=lambda: Target("cpu"))
    cuda: Target = field(default_factory=lambda: Target("cuda"))
    models_pvc: str | None = None  # a claim holding pulled models (default: an emptyDir per pod)
    assets: Path | None = None  # the folder holding grafana/ and prometheus/ (default: find_assets())


def workload_name(model_name: str) -> str:
    """A DNS-1035 name for a model's objects: lower case, letters, digits and '-', at most 40 characters
    (KServe appends ``-predictor`` and more)."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", model_name.lower())).strip("-")[:40].strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"m-{slug}".strip("-")
    return slug


def find_assets(start: Path | None = None) -> Path:
    """The repository's ``deploy/`` folder (holding the dashboard and the alert rules)."""
    here = (start or Path(__file__)).resolve()
    for parent in [here, *here.parents]:
        cand = parent / "deploy"
        if (cand / DASHBOARD).is_file() and (cand / ALERTS).is_file():
            return cand
    raise ConfigError("cannot find deploy/grafana/autoglm-dashboard.json and deploy/prometheus/alerts.yml: run from "
                      "a checkout of the repository, or pass --assets DIR (the repository's deploy/ folder)")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: every object reads on its own
        return True


def dump_yaml(*docs: dict[str, Any]) -> str:
    """Objects as one multi-document YAML text, keys in the order given."""
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
                         for d in docs)


def _max_replicas(model: Any, opts: KubeOptions) -> int:
    return max(model.replicas, opts.max_replicas or max(4, 4 * model.replicas))


def _names(config: DeployConfig) -> dict[str, str]:
    names: dict[str, str] = {}
    for m in config.models:
        if m.upstream is not None:
            continue
        name = workload_name(m.name)
        if name in names.values() or name == "autoglm-gateway":
            raise ConfigError(f"models[{config.models.index(m)}].name {m.name!r} gives the Kubernetes name {name!r}, "
                              "which another model (or the gateway) already has; rename one of them")
        names[m.name] = name
    return names


def render_kustomize(config: DeployConfig, opts: KubeOptions | None = None,
                     arch_of: Callable[[str], Any] = registry_arch) -> dict[str, str]:
    """The whole tree as ``{relative path: file text}`` (see the module docstring)."""
    opts = opts or KubeOptions()
    names = _names(config)
    local = [m for m in config.models if m.upstream is None]
    sizes: dict[str, dict[str, Sizing]] = {"cpu": {}, "cuda": {}}
    for m in local:
        sizes["cpu"][m.name] = size_model(m, opts.cpu, arch_of)
        sizes["cuda"][m.name] = size_model(m, opts.cuda, arch_of)
    grace, level = config.server.shutdown_grace, config.server.log_level
    assets = opts.assets or find_assets()
    dashboard = (assets / DASHBOARD).read_text(encoding="utf-8")
    alerts_text = (assets / ALERTS).read_text(encoding="utf-8")
    alerts = yaml.safe_load(alerts_text)

    files: dict[str, str] = {}
    plain_urls = {m.name: f"http://{names[m.name]}:{k.PORT}/v1" for m in local}
    kserve_urls = {m.name: f"http://{names[m.name]}-predictor/v1" for m in local}  # KServe's predictor Service
    _, env = gateway_deploy_file(config, plain_urls)
    files["base/gateway-deploy.yaml"] = _gateway_file_text(config, plain_urls)
    files["base/namespace.yaml"] = dump_yaml(k.namespace(opts.namespace))
    files["base/gateway.yaml"] = dump_yaml(
        k.gateway_deployment(opts.image_cpu, opts.gateway_replicas, grace, env),
        k.service("autoglm-gateway", "gateway", "http"),
        k.pdb("autoglm-gateway", "gateway", min_available=1))
    files["base/monitoring.yaml"] = dump_yaml(k.pod_monitor(), k.service_monitor(), k.prometheus_rule(alerts))
    files[f"base/{DASHBOARD}"] = dashboard
    files[f"base/{ALERTS}"] = alerts_text
    files["base/kustomization.yaml"] = dump_yaml({
        **_KUSTOMIZATION, "namespace": opts.namespace,
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "autoglm"}}],
        "resources": ["namespace.yaml", "gateway.yaml", "monitoring.yaml"],
        "configMapGenerator": [
            # the Grafana sidecar (kube-prometheus-stack) loads ConfigMaps labelled grafana_dashboard
            {"name": "autoglm-grafana-dashboard", "files": [DASHBOARD],
             "options": {"disableNameSuffixHash": True, "labels": {"grafana_dashboard": "1"}}},
            {"name": "autoglm-prometheus-alerts", "files": [ALERTS], "options": {"disableNameSuffixHash": True}},
            # the hash in its name rolls the gateway when the file changes
            {"name": "autoglm-gateway-config", "files": ["deploy.yaml=gateway-deploy.yaml"]}],
    })

    for overlay in OVERLAYS:
        kserve = overlay.startswith("kserve-")
        kind = overlay.removeprefix("kserve-")
        image = opts.image_cuda if kind == "cuda" else opts.image_cpu
        docs: list[dict[str, Any]] = []
        for m in local:
            name, sizing = names[m.name], sizes[kind][m.name]
            if kserve:
                docs.append(k.inference_service(name, m, sizing, image, grace, level, opts.namespace,
                                                _max_replicas(m, opts), opts.prometheus_url, opts.models_pvc))
            else:
                docs.append(k.deployment(name, m, sizing, image, grace, level, opts.models_pvc))
                docs.append(k.service(name, "model", "http1"))
                docs.append(k.scaled_object(name, m.name, opts.namespace, sizing.scale, m.replicas,
                                            _max_replicas(m, opts), opts.prometheus_url))
            docs.append(k.pdb(name, "model"))
        resources = ["../../base"]
        if docs:
            files[f"overlays/{overlay}/models.yaml"] = dump_yaml(*docs)
            resources.append("models.yaml")
        kustomization: dict[str, Any] = {**_KUSTOMIZATION, "namespace": opts.namespace, "resources": resources}
        if kserve:  # the gateway reaches the predictors' Services instead
            files[f"overlays/{overlay}/gateway-deploy.yaml"] = _gateway_file_text(config, kserve_urls)
            kustomization["configMapGenerator"] = [{"name": "autoglm-gateway-config", "behavior": "replace",
                                                    "files": ["deploy.yaml=gateway-deploy.yaml"]}]
        files[f"overlays/{overlay}/kustomization.yaml"] = dump_yaml(kustomization)
    files["README.md"] = _readme(config, opts, names, sizes)
    return files


def _gateway_file_text(config: DeployConfig, urls: dict[str, str]) -> str:
    gateway_file, _ = gateway_deploy_file(config, urls)
    return ("# The gateway's deploy file (generated by `autoglm deploy FILE --to kubernetes`): every local model\n"
            f"# is an upstream here; the ${{VAR}}s come from the Secret {SECRET_NAME}.\n"
            + yaml.safe_dump(gateway_file, sort_keys=False, width=120))


def _readme(config: DeployConfig, opts: KubeOptions, names: dict[str, str], sizes: dict[str, dict[str, Sizing]]) -> str:
    ns = opts.namespace
    rows = []
    for m in config.models:
        if m.upstream is not None:
            rows.append(f"| {m.name} | remote upstream | | | |")
            continue
        for kind in ("cpu", "cuda"):
            s = sizes[kind][m.name]
            res = s.resources()
            gpu = f", GPU {s.gpu_memory / 1024**3:.1f} GiB" if s.gpus else ""
            rows.append(f"| {m.name} ({names[m.name]}) | {kind}: {s.precision}, max_num_seqs {s.max_num_seqs}, "
                        f"max_model_len {s.max_model_len} | {res['requests']['memory']} / "
                        f"{res['limits']['memory']}{gpu} "
                        f"| waiting {s.scale.waiting_per_replica}, KV {s.scale.kv_cache_usage:g}, "
                        f"{s.scale.tokens_per_s_per_replica} tok/s | {m.replicas}..{_max_replicas(m, opts)} |")
    keys = key_commands(config, f"-n {ns} deploy/autoglm-gateway")
    lines = [
        "# Kubernetes manifests (generated by `autoglm deploy FILE --to kubernetes`)", "",
        "Overlays: `cpu`, `cuda` (Deployments + KEDA ScaledObjects), `kserve-cpu`, `kserve-cuda` (KServe",
        "InferenceServices, Standard mode, KEDA). Needs the Prometheus operator (PodMonitor, ServiceMonitor,",
        "PrometheusRule), KEDA, and for the KServe overlays KServe 0.15+.", "",
        "1. Create the Secret (never commit it):", "",
        "```bash",
        f"kubectl create namespace {ns}",
        f"kubectl -n {ns} create secret generic {SECRET_NAME} \\",
        "  --from-literal=state-url='postgresql://USER:PASSWORD@HOST:5432/autoglm' \\",
        "  --from-literal=redis-url='redis://HOST:6379/0' \\",
        "  --from-literal=admin-key=\"$(openssl rand -hex 24)\" \\",
        "  --from-literal=internal-key=\"$(openssl rand -hex 24)\"",
        "```", "",
        "2. Apply one overlay: `kubectl apply -k overlays/cpu` (or cuda, kserve-cpu, kserve-cuda).", "",
        "| model | plan | memory request / limit | scale-out targets per replica | replicas |",
        "|---|---|---|---|---|", *rows, "",
    ]
    if keys:
        lines += ["3. Create the deploy file's API keys (each is printed once):", "", "```bash", *keys, "```", ""]
    return "\n".join(lines)


def write_tree(files: dict[str, str], out: Path) -> list[Path]:
    """Write ``files`` under ``out`` (created); returns the paths written."""
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
