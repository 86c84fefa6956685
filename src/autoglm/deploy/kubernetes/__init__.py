"""Kubernetes from the deploy file: manifests, autoscaling, training and search jobs, offline validation.

- :mod:`~autoglm.deploy.kubernetes.render` - a deploy file as a kustomize tree (base + CPU/CUDA x plain
  Deployments/KServe overlays): ``autoglm deploy FILE --to kubernetes``;
- :mod:`~autoglm.deploy.kubernetes.sizing` - pod resources and autoscaling targets from the precision planner;
- :mod:`~autoglm.deploy.kubernetes.gateway_file` - the gateway's in-cluster deploy file (models as upstreams);
- :mod:`~autoglm.deploy.kubernetes.objects` - the Kubernetes objects as dicts;
- :mod:`~autoglm.deploy.kubernetes.jobs` - a pipeline as a Kubeflow ``PyTorchJob``, a search as an indexed ``Job``;
- :mod:`~autoglm.deploy.kubernetes.validate` - every object against the Kubernetes schemas
  (``kubernetes-validate``, the ``k8s`` extra) and the vendored CRD schemas in ``crds/`` (KServe, KEDA,
  Prometheus operator, Kubeflow training operator), and ``kubectl kustomize`` over each overlay.

Importing this package does no work; nothing here talks to a cluster.
"""
from __future__ import annotations

from autoglm.deploy.kubernetes.render import OVERLAYS, KubeOptions, render_kustomize, write_tree
from autoglm.deploy.kubernetes.sizing import Target

__all__ = ["OVERLAYS", "KubeOptions", "Target", "render_kustomize", "write_tree"]
