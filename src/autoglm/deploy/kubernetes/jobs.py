"""A pipeline file as cluster jobs: training as a Kubeflow ``PyTorchJob``, a search as an indexed ``Job``.

:func:`pytorch_job` - ``autoglm pipeline compile FILE --to pytorchjob``: a ConfigMap with the pipeline
file and a ``PyTorchJob`` (Kubeflow training operator, ``kubeflow.org/v1``) of one Master and
``nodes - 1`` Workers, each pod running ``torchrun --no-python autoglm pipeline run FILE`` with
``nprocPerNode`` processes. The operator sets ``PET_NNODES``, ``PET_NODE_RANK``,
``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` in every pod, and torchrun reads its
options from exactly those variables, so nothing about the rendezvous is spelt twice. Rank 0 runs the
pipeline; the other ranks wait for its preprocessing and join the train stage
(:func:`autoglm.training.launch.follow`) in the same work directory, which is why every pod mounts
one ReadWriteMany volume as ``AUTOGLM_HOME`` (``/data``).

:func:`tune_job` - ``autoglm pipeline compile FILE --to tune-job``: an indexed ``Job`` of ``workers``
pods sharing one Optuna study in PostgreSQL (the URL from the Secret ``autoglm-secrets``, key
``optuna-storage``; never in the manifest). Index 0 runs ``autoglm tune FILE`` (trials, then the
report and the best model's registration); the others run ``autoglm tune FILE --worker``, which only
runs trials. Optuna's storage does the rest: whoever creates the study queues a grid once, the
constant-liar TPE sampler spreads parallel trials, a worker that dies leaves a trial the next one
recovers (:func:`autoglm.tuning.study.recover_stale_trials`).

The file is mounted at ``base_dir/<file name>`` (``subPath``), so its relative data paths resolve
under ``base_dir`` on the shared volume: :class:`CompiledJobs` lists the data files the pods will
read, to be copied there. ``MLFLOW_TRACKING_URI`` (``tracking_uri``) points every pod at one MLflow
server. Knows the pipeline schema and the two job kinds; not argparse, not how to submit.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from autoglm.deploy.kubernetes.gateway_file import SECRET_NAME, SecretEnv
from autoglm.errors import ConfigError

__all__ = ["CompiledJobs", "pytorch_job", "tune_job", "DEFAULT_BASE_DIR", "SHARED_PVC"]

DEFAULT_BASE_DIR = "/data/work"
SHARED_PVC = "autoglm-shared"
_UID = 10001


@dataclass(frozen=True)
class CompiledJobs:
    objects: list[dict[str, Any]]
    name: str  # the Kubernetes name of the job
    data_files: list[str]  # where the pods read the pipeline's data (to be copied onto the shared volume)

    def yaml(self) -> str:
        from autoglm.deploy.kubernetes.render import dump_yaml

        return dump_yaml(*self.objects)


def _k8s_name(name: str) -> str:
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")[:50].strip("-")
    return slug if slug and slug[0].isalpha() else f"p-{slug}".strip("-")


def _load(path: Path) -> tuple[Any, str]:
    from autoglm.training.loader import load_pipeline_file

    config = load_pipeline_file(path)  # a mistake is file:line key, before anything is written
    return config, path.read_text(encoding="utf-8")


def _data_files(config: Any, base_dir: str) -> list[str]:
    out = []
    for value in (config.data.train, config.data.valid, config.data.test, config.data.reference):
        if value:
            p = PurePosixPath(value)
            out.append(posixpath.normpath(str(p if p.is_absolute() else PurePosixPath(base_dir) / p)))
    return out


def _config_map(name: str, filename: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-pipeline", "labels": _labels(name)}, "data": {filename: text}}


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "autoglm", "app.kubernetes.io/component": "job",
            "app.kubernetes.io/instance": name}


def _pvc(claim: str, size: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}}


def _pod(name: str, filename: str, base_dir: str, container: dict[str, Any], claim: str,
         restart: str) -> dict[str, Any]:
    container.setdefault("env", []).extend([{"name": "AUTOGLM_HOME", "value": "/data"}])
    container["volumeMounts"] = [
        {"name": "shared", "mountPath": "/data"},
        {"name": "pipeline", "mountPath": f"{base_dir}/{filename}", "subPath": filename, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},  # torch's data loaders and gloo/nccl use shared memory
    ]
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return {"metadata": {"labels": _labels(name)}, "spec": {
        "restartPolicy": restart,
        "securityContext": {"runAsNonRoot": True, "runAsUser": _UID, "runAsGroup": _UID, "fsGroup": _UID},
        "containers": [container],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": claim}},
                    {"name": "pipeline", "configMap": {"name": f"{name}-pipeline"}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
    }}


def _tracking_env(tracking_uri: str | None) -> list[dict[str, Any]]:
    return [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}] if tracking_uri else []


def pytorch_job(path: str | Path, *, nodes: int = 1, nproc: int | None = None, device: str = "cpu",
                image: str = "autoglm:cpu", base_dir: str = DEFAULT_BASE_DIR, tracking_uri: str | None = None,
                claim: str | None = None, storage: str = "50Gi") -> CompiledJobs:
    """The pipeline at ``path`` as a PyTorchJob (see the module docstring)."""
    path = Path(path)
    config, text = _load(path)
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1; got {nodes}")
    dist = getattr(config.train, "distributed", None)
    if dist is None:
        raise ConfigError(f"{path}: train.trainer {config.train.trainer!r} does not train data-parallel; a "
                          "PyTorchJob needs the causal-lm trainer (use --to kubeflow for the others)")
    nproc = nproc or dist.nproc
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1; got {nproc}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda; got {device!r}")
    name = _k8s_name(config.name)
    filename = path.name
    file_in_pod = f"{base_dir}/{filename}"
    per_pod = {"nvidia.com/gpu": nproc} if device == "cuda" else {}
    cpus = nproc * (4 if device == "cuda" else 2)
    resources = {"requests": {"cpu": str(cpus), "memory": f"{8 * nproc}Gi", **per_pod},
                 "limits": {"memory": f"{16 * nproc}Gi", **per_pod}}

    def replica(count: int) -> dict[str, Any]:
        container = {
            "name": "pytorch",  # the training operator looks for this container name
            "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["torchrun"],
            # --nnodes, --node-rank, --nproc-per-node, --master-addr/port: from the operator's PET_* variables
            "args": ["--no-python", "autoglm", "pipeline", "run", file_in_pod, "--quiet"],
            "ports": [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}],
            "env": _tracking_env(tracking_uri), "resources": resources,
        }
        template = _pod(name, filename, base_dir, container, claim or SHARED_PVC, "OnFailure")
        if device == "cuda":
            template["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        return {"replicas": count, "restartPolicy": "OnFailure", "template": template}

    specs = {"Master": replica(1)}
    if nodes > 1:
        specs["Worker"] = replica(nodes - 1)
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": name, "labels": _labels(name)},
           "spec": {"nprocPerNode": str(nproc),
                    # a restarted pod resumes from the stage checkpoints on the shared volume
                    "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
                    "pytorchReplicaSpecs": specs}}
    objects = [_config_map(name, filename, text), job]
    if claim is None:
        objects.insert(0, _pvc(SHARED_PVC, storage))
    return CompiledJobs(objects, name, _data_files(config, base_dir))


def tune_job(path: str | Path, *, workers: int = 4, image: str = "autoglm:cpu", base_dir: str = DEFAULT_BASE_DIR,
             tracking_uri: str | None = None, claim: str | None = None, study: str | None = None,
             storage: str = "20Gi") -> CompiledJobs:
    """The search of the pipeline at ``path`` as an indexed Job of ``workers`` pods (see the module docstring)."""
    path = Path(path)
    config, text = _load(path)
    if config.search is None:
        raise ConfigError(f"{path}: has no search: block; a tune job searches it (add one, see "
                          "examples/pipelines/credit-search.yaml)")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}")
    name = _k8s_name(f"{config.name}-tune")
    study_name = study or config.name
    filename = path.name
    file_in_pod = f"{base_dir}/{filename}"
    common = f'"{file_in_pod}" --storage "$AUTOGLM_OPTUNA_STORAGE" --study "{study_name}"'
    script = (f'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then exec autoglm tune {common} --quiet; '
              f"else exec autoglm tune {common} --worker; fi")
    container = {
        "name": "tune", "image": image, "imagePullPolicy": "IfNotPresent",
        # index 0 reports and registers the best trial; the others only run trials
        "command": ["sh", "-c", script],
        "env": [SecretEnv("AUTOGLM_OPTUNA_STORAGE", "optuna-storage").env_var(SECRET_NAME),
                *_tracking_env(tracking_uri)],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": _labels(name)},
           "spec": {"completionMode": "Indexed", "completions": workers, "parallelism": workers,
                    "backoffLimit": workers,  # a lost worker's trial is recovered by the study, not redone here
                    "template": _pod(name, filename, base_dir, container, claim or SHARED_PVC, "OnFailure")}}
    objects = [_config_map(name, filename, text), job]
    if claim is None:
        objects.insert(0, _pvc(SHARED_PVC, storage))
    return CompiledJobs(objects, name, _data_files(config, base_dir))
