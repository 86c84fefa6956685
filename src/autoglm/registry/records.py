"""Registered models as plain dicts, and alias moves that tell the webhooks: the CLI's and the API's.

:func:`list_models` / :func:`get_model` read MLflow's registry (versions, their tags and metrics, and
the aliases that point at them). :func:`promote_model` / :func:`rollback_model` are
:func:`autoglm.loop.promote.promote` / :func:`~autoglm.loop.promote.rollback` plus the registry event
``model_version_alias.created`` (MLflow's name) to the outbound webhooks of ``AUTOGLM_WEBHOOKS``, queued
in the delivery log of ``AUTOGLM_STATE_URL`` (or ``<AUTOGLM_HOME>/state.db``) and sent once right away
(what is not delivered is retried by the next sender or ``autoglm webhooks flush``). ``autoglm models
promote|rollback`` and ``POST /admin/models/{name}/promote|rollback`` both call these, so a promotion by
hand, over HTTP and by the loop look the same to a receiver. Knows nothing about HTTP or argparse.
"""
from __future__ import annotations

import logging
from typing import Any

from autoglm.errors import NotFoundError

__all__ = ["list_models", "get_model", "promote_model", "rollback_model", "notify", "notify_alias_set"]

log = logging.getLogger("autoglm.registry")


def _uri(tracking_uri: str | None) -> str:
    from autoglm.config import tracking_uri as default_uri

    return tracking_uri or default_uri()


def _client(tracking_uri: str | None) -> Any:
    from autoglm.loop.promote import registry_client

    return registry_client(_uri(tracking_uri))


def _ms(ts: Any) -> float | None:
    return ts / 1000.0 if isinstance(ts, (int, float)) else None


def _version(mv: Any) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    return {"version": str(mv.version), "status": mv.status, "run_id": mv.run_id, "source": mv.source,
            "created_at": _ms(mv.creation_timestamp), "aliases": sorted(getattr(mv, "aliases", None) or []),
            "metrics": {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.")},
            "tags": tags}


def _model(client: Any, rm: Any) -> dict[str, Any]:
    versions = sorted((_version(v) for v in client.search_model_versions(f"name = '{rm.name}'")),
                      key=lambda v: int(v["version"]) if v["version"].isdigit() else 0)
    aliases = dict(getattr(rm, "aliases", None) or {})
    for v in versions:  # the registered model's alias map is authoritative
        v["aliases"] = sorted(a for a, ver in aliases.items() if str(ver) == v["version"])
    return {"object": "registered_model", "name": rm.name, "description": rm.description or "",
            "created_at": _ms(rm.creation_timestamp), "updated_at": _ms(rm.last_updated_timestamp),
            "aliases": {a: str(v) for a, v in sorted(aliases.items())},
            "latest_version": versions[-1]["version"] if versions else None, "versions": versions}


def list_models(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered model with its versions and aliases, by name."""
    client = _client(tracking_uri)
    return [_model(client, rm) for rm in sorted(client.search_registered_models(max_results=1000),
                                                key=lambda m: m.name)]


def get_model(name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    client = _client(tracking_uri)
    try:
        rm = client.get_registered_model(name)
    except Exception:  # MLflow's RESOURCE_DOES_NOT_EXIST (or a name it refuses)
        known = ", ".join(m.name for m in client.search_registered_models(max_results=50)) or "none"
        raise NotFoundError(f"no registered model named {name[:80]!r} in {_uri(tracking_uri)} (registered models: "
                            f"{known}); run a pipeline with a register: stage", param="name") from None
    return _model(client, rm)


def notify(event: str, data: dict[str, Any], *, environ: Any = None) -> list[str]:
    """Queue ``event`` (``entity.action``: ``deploy.swapped``, ``alert.drift``, ...) for the outbound webhooks
    of ``AUTOGLM_WEBHOOKS`` and send what is due once; returns the delivery ids ([] without a webhooks file or
    an interested target). Blocking (the delivery log and one send round): call it off the event loop."""
    from autoglm.registry.webhook_config import WebhookSettings

    settings = WebhookSettings.from_env(environ)
    targets = list(settings.config.outbound)
    if not targets:
        return []
    from autoglm.gateway.store import open_store
    from autoglm.registry.webhooks import WebhookSender

    store = open_store(settings.store_url)
    try:
        sender = WebhookSender(targets, store)
        ids = sender.emit(event, data)
        try:
            sender.deliver_due()
        except Exception:  # noqa: BLE001 - queued in the log; the next sender delivers it
            log.warning("webhook delivery of %s failed; it stays queued", event, exc_info=True)
        return ids
    finally:
        store.close()


def notify_alias_set(model: str, alias: str, version: str, *, environ: Any = None) -> list[str]:
    """MLflow's ``model_version_alias.created`` (``{"name", "alias", "version"}``) through :func:`notify`."""
    return notify("model_version_alias.created", {"name": model, "alias": alias, "version": str(version)},
                  environ=environ)


def promote_model(name: str, version: str | int, *, alias: str = "champion", tracking_uri: str | None = None,
                  reason: str = "by hand") -> dict[str, Any]:
    """Point ``alias`` at ``version`` (see :func:`autoglm.loop.promote.promote`) and tell the webhooks;
    returns {"name", "alias", "version", "previous", "changed", "webhooks": [delivery ids]}."""
    from autoglm.loop.promote import promote

    done = promote(name, version, tracking_uri=_uri(tracking_uri), alias=alias, reason=reason)
    done["webhooks"] = notify_alias_set(name, alias, done["version"]) if done["changed"] else []
    log.info("registry: %s version %s is @%s (was %s)", name, done["version"], alias, done["previous"])
    return done


def rollback_model(name: str, *, alias: str = "champion", tracking_uri: str | None = None) -> dict[str, Any]:
    """Point ``alias`` back at the version it named before and tell the webhooks;
    returns {"name", "alias", "version", "from", "webhooks"}."""
    from autoglm.loop.promote import rollback

    done = rollback(name, tracking_uri=_uri(tracking_uri), alias=alias)
    done["webhooks"] = notify_alias_set(name, alias, done["version"])
    log.info("registry: %s @%s rolled back from version %s to %s", name, alias, done["from"], done["version"])
    return done
