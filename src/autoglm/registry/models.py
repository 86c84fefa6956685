"""Registered models: MLflow's model registry, used as it is.

:func:`register_model_version` logs a trained model directory as the run's ``model`` artifact and
creates a version of a registered model, tagged with the training stage's key so that registering
the same trained model again returns the same version; then it points an alias (``challenger`` by
default) at it. :func:`resolve_registered_model` turns ``models:/NAME@ALIAS`` (or ``models:/NAME/3``)
into a local directory that ``autoglm serve`` loads, downloading the artifacts once into the store.
Knows nothing about pipelines or engines.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError, ModelNotFoundError

__all__ = ["register_model_version", "resolve_registered_model", "parse_models_uri", "TRAIN_KEY_TAG"]

log = logging.getLogger("autoglm.registry")
TRAIN_KEY_TAG = "autoglm_train_key"
_URI = re.compile(r"^models:/([^/@]+)(?:@([A-Za-z0-9_\-]+)|/([0-9]+))$")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/3`` -> (NAME, None, "3")."""
    m = _URI.match(uri.strip())
    if m is None:
        raise ConfigError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION; got {uri!r}")
    return m.group(1), m.group(2), m.group(3)


def register_model_version(tracker: Any, *, name: str, alias: str, model_dir: Path, train_key: str,
                           metrics: dict[str, float] | None = None) -> str:
    """Register ``model_dir`` (once per ``train_key``) and set ``alias``; returns the version number."""
    client = tracker.client
    try:
        client.get_registered_model(name)
    except Exception:
        try:
            client.create_registered_model(name, description="Registered by an autoglm pipeline")
        except Exception:  # created by another process meanwhile
            client.get_registered_model(name)
    existing = client.search_model_versions(f"name = '{name}' and tags.{TRAIN_KEY_TAG} = '{train_key}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        run_tags = client.get_run(tracker.run_id).data.tags
        if run_tags.get("autoglm.model_logged") != train_key:
            tracker.log_artifacts(model_dir, "model")
            tracker.set_tags({"autoglm.model_logged": train_key})
        tags = {TRAIN_KEY_TAG: train_key, **{f"metric.{k}": f"{v:.6g}" for k, v in (metrics or {}).items()}}
        mv = client.create_model_version(name, source=tracker.artifact_uri("model"), run_id=tracker.run_id,
                                         tags=tags)
        version = str(mv.version)
    client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s as @%s", name, version, alias)
    return version


def resolve_registered_model(uri: str, tracking_uri: str, store_dir: Path) -> Path:
    """The local directory of the version ``uri`` names (downloaded into ``store_dir/registry`` once)."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise ConfigError(f'serving {uri} needs MLflow: pip install -c constraints.txt -e ".[train]"') from None
    name, alias, version = parse_models_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        known = ", ".join(m.name for m in client.search_registered_models(max_results=50)) or "none"
        raise ModelNotFoundError(f"{uri} is not in the model registry at {tracking_uri} (registered models: "
                                 f"{known}); run a pipeline with a register: stage, or set MLFLOW_TRACKING_URI") from None
    target = store_dir / "registry" / name / f"v{mv.version}"
    if not (target / ".complete").is_file():
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp),
                                                         tracking_uri=tracking_uri))
        shutil.rmtree(target, ignore_errors=True)
        local.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        (target / ".complete").write_text(f"{uri} version {mv.version}\n")
    return target
