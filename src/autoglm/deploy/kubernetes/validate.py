"""Offline checks of generated manifests: the Kubernetes schemas, the CRD schemas, ``kubectl kustomize``.

:func:`validate_objects` checks each object: built-in kinds against Kubernetes' own JSON schemas for
:data:`K8S_VERSION` as the ``kubernetes-validate`` package ships them (strict: an unknown field is an
error, as ``kubectl apply --validate=strict`` would say), and the custom resources against the
``openAPIV3Schema`` of their CRDs, vendored in ``crds/`` (KServe InferenceService, KEDA ScaledObject,
Prometheus-operator PodMonitor/ServiceMonitor/PrometheusRule, Kubeflow PyTorchJob; each file names
its source and what was trimmed) with :mod:`jsonschema`. A structural CRD schema prunes unknown
fields silently on the API server, so :func:`crd_json_schema` makes every object without
``x-kubernetes-preserve-unknown-fields`` closed: a misspelt field is reported instead of dropped.

:func:`kustomize_build` renders a kustomization directory with ``kubectl kustomize`` (or
``kustomize build``) into objects. The ``k8s`` extra carries ``kubernetes-validate`` and ``jsonschema``.
Knows schemas; nothing about autoglm's objects.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from autoglm.errors import ConfigError

__all__ = ["K8S_VERSION", "CRD_FILES", "crd_json_schema", "validate_object", "validate_objects",
           "kustomize_build", "load_docs"]

K8S_VERSION = "1.37.0"  # the newest schema set of kubernetes-validate 1.37.0
CRD_DIR = Path(__file__).with_name("crds")
CRD_FILES = {  # (apiVersion, kind) -> vendored CRD schema
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices.serving.kserve.io_v1beta1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects.keda.sh_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors.monitoring.coreos.com_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors.monitoring.coreos.com_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrules.monitoring.coreos.com_v1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjobs.kubeflow.org_v1.json",
}
_EXTRA = 'validating manifests needs the k8s extra: pip install -c constraints.txt -e ".[k8s]"'
_DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_METADATA = {  # what the API server checks of every object's metadata that matters here
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "maxLength": 253, "pattern": _DNS1123},
                   "namespace": {"type": "string", "pattern": _DNS1123},
                   "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
}


def _closed(node: Any) -> Any:
    """An OpenAPI v3 structural schema as a JSON Schema that refuses unknown fields."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd_json_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The vendored CRD schema of ``kind`` as a closed JSON Schema (metadata checked too)."""
    name = CRD_FILES.get((api_version, kind))
    if name is None:
        raise KeyError(f"no vendored CRD for {api_version} {kind}")
    doc = json.loads((CRD_DIR / name).read_text(encoding="utf-8"))
    schema = _closed(copy.deepcopy(doc["openAPIV3Schema"]))
    schema["properties"]["metadata"] = _METADATA
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    return schema


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def validate_object(obj: dict[str, Any], k8s_version: str = K8S_VERSION) -> list[str]:
    """Problems of one object (empty when valid), each ``Kind/name: path: message``."""
    kind, api = obj.get("kind", "?"), obj.get("apiVersion", "?")
    label = f"{kind}/{(obj.get('metadata') or {}).get('name', '?')}"
    if (api, kind) in CRD_FILES:
        try:
            import jsonschema
        except ImportError:
            raise ConfigError(_EXTRA) from None
        validator = jsonschema.Draft7Validator(crd_json_schema(api, kind))
        return [f"{label}: {_where(e)}: {e.message}" for e in sorted(validator.iter_errors(obj), key=str)]
    try:
        import kubernetes_validate
    except ImportError:
        raise ConfigError(_EXTRA) from None
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{label}: {_where(exc)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{label}: {api} {kind} is neither a Kubernetes {k8s_version} kind nor a vendored CRD"]
    return []


def validate_objects(objs: list[dict[str, Any]], k8s_version: str = K8S_VERSION) -> list[str]:
    return [p for o in objs for p in validate_object(o, k8s_version)]


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize_build(directory: str | Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (or ``kustomize build DIR``) as objects; a ConfigError when it fails."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    else:
        raise ConfigError("rendering a kustomization needs kubectl (or kustomize) on PATH")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    return load_docs(proc.stdout)
