"""Promotion and rollback: an MLflow alias (``champion``) moved from one model version to another.

:func:`promote` points the alias at a version and records the version it pointed at before as the
tag ``autoglm.previous.<alias>`` on the new one, so :func:`rollback` can walk back one step at a time
(the rolled-back version is tagged ``autoglm.rolled_back.<alias>``). The history lives in the
registry itself, so a promotion by hand and one by the loop share it. Knows nothing about gates.
"""
from __future__ import annotations

import time
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["promote", "rollback", "current_version", "registry_client"]


def registry_client(tracking_uri: str) -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError('promotion needs MLflow: pip install -c constraints.txt -e ".[train]"') from None
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def current_version(client: Any, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # no such alias (or model) yet
        return None


def _version(client: Any, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except Exception:
        try:
            known = ", ".join(str(v.version) for v in client.search_model_versions(f"name = '{name}'")) or "none"
        except Exception:
            known = "none"
        raise ConfigError(f"model {name!r} has no version {version!r} in the registry (versions: {known})") from None


def promote(name: str, version: str | int, *, tracking_uri: str, alias: str = "champion",
            reason: str = "by hand") -> dict[str, Any]:
    """Point ``alias`` at ``version``; returns {"name", "alias", "version", "previous", "changed"}."""
    client = registry_client(tracking_uri)
    version = str(version)
    _version(client, name, version)
    previous = current_version(client, name, alias)
    if previous == version:
        return {"name": name, "alias": alias, "version": version, "previous": previous, "changed": False}
    if previous is not None:
        client.set_model_version_tag(name, version, f"autoglm.previous.{alias}", previous)
    client.set_model_version_tag(name, version, f"autoglm.promoted.{alias}", f"{time.time():.0f} {reason}"[:250])
    client.set_registered_model_alias(name, alias, version)
    return {"name": name, "alias": alias, "version": version, "previous": previous, "changed": True}


def rollback(name: str, *, tracking_uri: str, alias: str = "champion") -> dict[str, Any]:
    """Point ``alias`` back at the version it named before the current one."""
    client = registry_client(tracking_uri)
    now = current_version(client, name, alias)
    if now is None:
        raise ConfigError(f"model {name!r} has no @{alias}; nothing to roll back")
    previous = _version(client, name, now).tags.get(f"autoglm.previous.{alias}")
    if not previous:
        raise ConfigError(f"{name} version {now} is the first @{alias}; there is no earlier one to roll back to")
    client.set_model_version_tag(name, now, f"autoglm.rolled_back.{alias}", f"{time.time():.0f}")
    client.set_registered_model_alias(name, alias, previous)
    return {"name": name, "alias": alias, "version": previous, "from": now}
