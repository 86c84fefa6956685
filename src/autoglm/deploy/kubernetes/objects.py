"""Kubernetes objects of one deployment, as plain dicts: pods, Services, disruption budgets, monitoring,
autoscaling, KServe.

Every function here takes settings already decided (a :class:`~autoglm.deploy.kubernetes.sizing.Sizing`,
names, the grace period) and returns one object; nothing reads files, plans memory or writes YAML.
The container contract is the image's (``deploy/docker/Dockerfile.*``): the ``autoglm`` entry point,
port :data:`PORT`, ``GET /health`` (200 once the model is loaded, 503 while draining), user 10001 and
the ``/data`` volume as ``AUTOGLM_HOME``.

Graceful termination follows :mod:`autoglm.deploy.shutdown`: a ``preStop`` sleep of
:data:`PRESTOP_S` keeps the pod serving while its endpoint leaves every Service, then SIGTERM closes
the gate (new requests 503, ``/health`` draining), running requests get ``server.shutdown_grace``
seconds, and uvicorn has its own few seconds; ``terminationGracePeriodSeconds`` covers the sum
(:func:`termination_grace`) so the kubelet never SIGKILLs a pod that is still draining.
"""
from __future__ import annotations

import math
from typing import Any

from autoglm.deploy.kubernetes.gateway_file import INTERNAL_KEY_ENV, SECRET_NAME, SecretEnv
from autoglm.deploy.kubernetes.sizing import ScaleTargets, Sizing, quantity

__all__ = ["PORT", "PRESTOP_S", "UVICORN_SHUTDOWN_S", "START_PERIOD_S", "termination_grace", "labels",
           "model_args", "model_container", "model_pod_spec", "deployment", "service", "pdb", "gateway_deployment",
           "pod_monitor", "service_monitor", "prometheus_rule", "scaled_object", "inference_service",
           "scale_queries", "namespace"]

PORT = 8000  # EXPOSE in deploy/docker/Dockerfile.*
PRESTOP_S = 5  # endpoint removal reaches kube-proxy and the gateway's connections within this
UVICORN_SHUTDOWN_S = 5  # autoglm.deploy.assembly._UVICORN_SHUTDOWN_S
_MARGIN_S = 5  # engine shutdown, process exit
START_PERIOD_S = {"cpu": 300, "cuda": 600}  # HEALTHCHECK --start-period of Dockerfile.cpu / .cuda
_STARTUP_PERIOD_S = 10
UID = 10001  # the image's user


def termination_grace(shutdown_grace: float) -> int:
    """Seconds the kubelet waits between the preStop hook's start and SIGKILL."""
    return PRESTOP_S + math.ceil(shutdown_grace) + UVICORN_SHUTDOWN_S + _MARGIN_S


def labels(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "autoglm", "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": instance}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _probes(device: str, port_name: str) -> dict[str, Any]:
    def health() -> dict[str, Any]:
        return {"path": "/health", "port": port_name}

    return {
        # loading a model: the image's HEALTHCHECK start period, in 10 s probes
        "startupProbe": {"httpGet": health(), "periodSeconds": _STARTUP_PERIOD_S, "timeoutSeconds": 4,
                         "failureThreshold": START_PERIOD_S[device] // _STARTUP_PERIOD_S},
        # 503 while draining takes the pod out of the Service at once
        "readinessProbe": {"httpGet": health(), "periodSeconds": 5, "timeoutSeconds": 4, "failureThreshold": 2},
        # alive = accepting connections; /health is 503 while draining, which must not restart the pod
        "livenessProbe": {"tcpSocket": {"port": port_name}, "periodSeconds": 20, "timeoutSeconds": 4,
                          "failureThreshold": 3},
    }


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def model_args(model: Any, sizing: Sizing, shutdown_grace: float, log_level: str) -> list[str]:
    """``autoglm serve`` arguments for one model pod (the sizing's precision and limits, behind the gateway)."""
    return ["serve", "--host", "0.0.0.0", "--port", str(PORT), "--model", model.model_source,
            "--served-model-name", model.name, "--engine", model.engine, "--device", sizing.device,
            "--quantize", sizing.precision, "--max-num-seqs", str(sizing.max_num_seqs),
            "--max-model-len", str(sizing.max_model_len), "--max-queue", str(model.max_queue),
            "--prefill-chunk", str(model.prefill_chunk), "--prefix-cache-tokens", str(model.prefix_cache_tokens),
            "--request-timeout", f"{model.request_timeout:g}", "--shutdown-grace", f"{shutdown_grace:g}",
            "--log-level", log_level, "--no-ui",
            # only the gateway (and Prometheus) hold the internal key; kubelet expands $(VAR) from the env
            "--no-gateway", "--api-key", f"$({INTERNAL_KEY_ENV})"]


def model_container(model: Any, sizing: Sizing, image: str, shutdown_grace: float, log_level: str,
                    name: str = "server") -> dict[str, Any]:
    _, sec = _security()
    return {
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["autoglm"], "args": model_args(model, sizing, shutdown_grace, log_level),
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "env": [SecretEnv(INTERNAL_KEY_ENV, "internal-key").env_var(), {"name": "AUTOGLM_HOME", "value": "/data"}],
        "resources": sizing.resources(),
        **_probes(sizing.device, "http1"),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "securityContext": sec,
    }


def _data_volume(sizing: Sizing | None, models_pvc: str | None) -> dict[str, Any]:
    if models_pvc:
        return {"name": "data", "persistentVolumeClaim": {"claimName": models_pvc}}
    size = "8Gi" if sizing is None else quantity(max(8 * 1024**3, 3 * sizing.memory_request))
    return {"name": "data", "emptyDir": {"sizeLimit": size}}


def model_pod_spec(model: Any, sizing: Sizing, image: str, shutdown_grace: float, log_level: str,
                   container_name: str = "server", models_pvc: str | None = None) -> dict[str, Any]:
    pod_sec, _ = _security()
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": termination_grace(shutdown_grace),
        "securityContext": pod_sec,
        "containers": [model_container(model, sizing, image, shutdown_grace, log_level, container_name)],
        "volumes": [_data_volume(sizing, models_pvc)],
    }
    if sizing.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        # NVIDIA GPU feature discovery labels each GPU node with its memory in MiB
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt",
                                   "values": [str(math.ceil(sizing.gpu_memory / 1024**2) - 1)]}]}]}}}
    return spec


def _pod_annotations(sizing: Sizing) -> dict[str, str]:
    ann = {"autoglm.io/precision": sizing.precision, "autoglm.io/max-num-seqs": str(sizing.max_num_seqs),
           "autoglm.io/max-model-len": str(sizing.max_model_len)}
    if sizing.gpu_memory:
        ann["autoglm.io/gpu-memory"] = quantity(sizing.gpu_memory)
    return ann


def deployment(name: str, model: Any, sizing: Sizing, image: str, shutdown_grace: float, log_level: str,
               models_pvc: str | None = None) -> dict[str, Any]:
    lab = labels("model", name)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": lab},
        "spec": {
            "replicas": model.replicas,
            "selector": {"matchLabels": lab},
            # a new pod must be ready (model loaded) before an old one goes: capacity never dips
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": lab, "annotations": _pod_annotations(sizing)},
                         "spec": model_pod_spec(model, sizing, image, shutdown_grace, log_level,
                                                models_pvc=models_pvc)},
        },
    }


def service(name: str, component: str, port_name: str) -> dict[str, Any]:
    lab = labels(component, name)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": lab},
            "spec": {"selector": lab, "ports": [{"name": "http", "port": PORT, "targetPort": port_name,
                                                 "protocol": "TCP"}]}}


def pdb(name: str, component: str, *, min_available: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": labels(component, name)}}
    if min_available is not None:
        spec["minAvailable"] = min_available
    else:
        spec["maxUnavailable"] = 1  # one pod at a time; never blocks a node drain for a single replica
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name,
                                                                                  "labels": labels(component, name)},
            "spec": spec}


def gateway_deployment(image: str, replicas: int, shutdown_grace: float, env: list[SecretEnv],
                       config_map: str = "autoglm-gateway-config") -> dict[str, Any]:
    name = "autoglm-gateway"
    lab = labels("gateway", name)
    pod_sec, sec = _security()
    container = {
        "name": "gateway", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["autoglm"], "args": ["deploy", "/etc/autoglm/deploy.yaml"],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [e.env_var() for e in env] + [{"name": "AUTOGLM_HOME", "value": "/data"}],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        **_probes("cpu", "http"),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/autoglm", "readOnly": True},
                         {"name": "data", "mountPath": "/data"}],
        "securityContext": sec,
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": lab},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": lab},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": lab}, "spec": {
                "terminationGracePeriodSeconds": termination_grace(shutdown_grace),
                "securityContext": pod_sec,
                # spread the replicas so one node going away leaves the endpoint up
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                               "whenUnsatisfiable": "ScheduleAnyway",
                                               "labelSelector": {"matchLabels": lab}}],
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": config_map}},
                            {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
            }},
        },
    }


def _bearer(key: str) -> dict[str, Any]:
    return {"type": "Bearer", "credentials": {"name": SECRET_NAME, "key": key}}


def pod_monitor() -> dict[str, Any]:
    """Scrapes every model pod (plain Deployments and KServe predictors alike: both carry the labels)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "autoglm-models", "labels": labels("model", "autoglm-models")},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "autoglm",
                                                  "app.kubernetes.io/component": "model"}},
                     "jobLabel": "app.kubernetes.io/component",  # job="model" in every series
                     "podMetricsEndpoints": [{"port": "http1", "path": "/metrics", "interval": "15s",
                                              "authorization": _bearer("internal-key")}]}}


def service_monitor() -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "autoglm-gateway", "labels": labels("gateway", "autoglm-gateway")},
            "spec": {"selector": {"matchLabels": labels("gateway", "autoglm-gateway")},
                     "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s",
                                    "authorization": _bearer("admin-key")}]}}


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """deploy/prometheus/alerts.yml as a PrometheusRule (the operator's Prometheus loads it)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "autoglm-alerts", "labels": labels("monitoring", "autoglm-alerts")},
            "spec": {"groups": alerts["groups"]}}


def scale_queries(namespace_: str, model_name: str) -> dict[str, str]:
    """The three PromQL queries the autoscaler divides by the replica count (sums over the model's pods)."""
    sel = f'namespace="{namespace_}",job="model",model_name="{model_name}"'
    return {
        "waiting": f"sum(autoglm:num_requests_waiting{{{sel}}})",
        "kv-cache": f"sum(autoglm:kv_cache_usage_perc{{{sel}}})",
        "tokens": f"sum(rate(autoglm:generation_tokens_total{{{sel}}}[2m]))",
    }


def _targets(targets: ScaleTargets) -> dict[str, str]:
    return {"waiting": str(targets.waiting_per_replica), "kv-cache": f"{targets.kv_cache_usage:g}",
            "tokens": str(targets.tokens_per_s_per_replica)}


def scaled_object(name: str, model_name: str, namespace_: str, targets: ScaleTargets, min_replicas: int,
                  max_replicas: int, prometheus_url: str) -> dict[str, Any]:
    """KEDA ScaledObject: replicas = max over the three triggers of ceil(sum / per-replica target)."""
    queries, thresholds = scale_queries(namespace_, model_name), _targets(targets)
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "labels": labels("model", name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": min_replicas, "maxReplicaCount": max_replicas,
            "pollingInterval": 15, "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                # a model pod takes minutes to load: add fast, remove slowly
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}}}},
            "triggers": [{"type": "prometheus", "name": key, "metricType": "AverageValue",
                          "metadata": {"serverAddress": prometheus_url, "query": queries[key],
                                       "threshold": thresholds[key]}} for key in ("waiting", "kv-cache", "tokens")],
        },
    }


def inference_service(name: str, model: Any, sizing: Sizing, image: str, shutdown_grace: float, log_level: str,
                      namespace_: str, max_replicas: int, prometheus_url: str,
                      models_pvc: str | None = None) -> dict[str, Any]:
    """KServe InferenceService (Standard deployment mode) with our image as a custom predictor, scaled by
    KEDA on the same three queries as the plain overlays."""
    pod = model_pod_spec(model, sizing, image, shutdown_grace, log_level, container_name="kserve-container",
                         models_pvc=models_pvc)
    queries, thresholds = scale_queries(namespace_, model.name), _targets(sizing.scale)
    predictor: dict[str, Any] = {
        "minReplicas": model.replicas, "maxReplicas": max_replicas,
        "labels": labels("model", name), "annotations": _pod_annotations(sizing),
        **pod,
        "autoScaling": {"metrics": [
            {"type": "External", "external": {
                "metric": {"backend": "prometheus", "serverAddress": prometheus_url, "query": queries[key]},
                "target": {"type": "AverageValue", "averageValue": thresholds[key]}}}
            for key in ("waiting", "kv-cache", "tokens")]},
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "labels": labels("model", name), "annotations": {
            "serving.kserve.io/deploymentMode": "Standard",
            "serving.kserve.io/autoscalerClass": "keda"}},
        "spec": {"predictor": predictor},
    }
