"""The webhooks file: where events go (``outbound:``) and which signed requests come in (``inbound:``).

::

    outbound:
      - name: ops
        url: https://hooks.example.com/autoglm
        secret: ${OPS_HOOK_SECRET}
        events: [registry, deploy]       # categories, or entity.action patterns such as model_version_alias.*
        max_attempts: 5                  # then the delivery is a dead letter
    inbound:
      - name: mlflow                     # POST /admin/hooks/mlflow
        secret: ${MLFLOW_WEBHOOK_SECRET}
        action: redeploy                 # model_version_alias.created -> on_alias_set(model, alias, version)
        aliases: [champion]              # optional: only these aliases (and models: [...]) redeploy

The file is ``AUTOGLM_WEBHOOKS`` (or ``--file``); mistakes are ``file:line key``; ``${VAR}`` takes a
secret from the environment. Secrets are :class:`pydantic.SecretStr`: never in a repr, a log or the
store. Knows nothing about HTTP or storage.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, PositiveFloat, PositiveInt, SecretStr

__all__ = ["OutboundTarget", "InboundHook", "WebhooksConfig", "WebhookSettings", "load_webhooks_file",
           "CATEGORIES", "event_matches"]

# Event categories a target may subscribe to, as entity patterns (MLflow's entities for the registry).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "registry": ("registered_model.*", "model_version.*", "model_version_alias.*", "model_version_tag.*"),
    "loop": ("loop.*",),
    "alert": ("alert.*",),
    "deploy": ("deploy.*",),
    "training": ("stage.*", "guard.*", "lr.*"),
}


def event_matches(event: str, patterns: list[str]) -> bool:
    """``event`` (``entity.action``) against category names and fnmatch patterns."""
    for p in patterns:
        if any(fnmatch.fnmatchcase(event, c) for c in CATEGORIES.get(p, (p,))):
            return True
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutboundTarget(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: HttpUrl
    secret: Optional[SecretStr] = None  # unsigned without one (MLflow does the same)
    events: list[str] = Field(default_factory=lambda: ["*"])
    max_attempts: PositiveInt = 5
    backoff_s: PositiveFloat = 2.0  # first retry after about this long, doubling (with jitter)
    max_backoff_s: PositiveFloat = 600.0
    timeout_s: PositiveFloat = 10.0

    def wants(self, event: str) -> bool:
        return event_matches(event, self.events)


class InboundHook(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    secret: SecretStr
    action: Literal["redeploy", "record"] = "redeploy"  # record: verify and log, run nothing
    tolerance_s: PositiveFloat = 300.0  # a timestamp further from now than this is refused
    models: Optional[list[str]] = None  # redeploy only these registered models (default: any)
    aliases: Optional[list[str]] = None  # ... and only these aliases (default: any)


class WebhooksConfig(_Strict):
    outbound: list[OutboundTarget] = Field(default_factory=list)
    inbound: list[InboundHook] = Field(default_factory=list)


def _duplicates(config: WebhooksConfig) -> list[tuple[tuple, str]]:
    out = []
    for section in ("outbound", "inbound"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(config, section)):
            if item.name in seen:
                out.append(((section, i, "name"), f"the name {item.name!r} is used twice in {section}:"))
            seen.add(item.name)
    return out


def load_webhooks_file(path: str | Path) -> WebhooksConfig:
    from autoglm.configfile import load_yaml_config

    return load_yaml_config(path, "webhooks file", WebhooksConfig, problems=_duplicates,
                            empty_hint="a webhooks file has 'outbound:' and/or 'inbound:' lists")


@dataclass
class WebhookSettings:
    """Where the webhooks file and the state store (delivery log, receipts) are."""

    file: str | None = None
    store_url: str | None = None
    config: WebhooksConfig = field(default_factory=WebhooksConfig)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, file: str | None = None,
                 store_url: str | None = None) -> WebhookSettings:
        """``AUTOGLM_WEBHOOKS`` (the file) and ``AUTOGLM_STATE_URL``; the arguments win."""
        env = os.environ if environ is None else environ
        path = file or env.get("AUTOGLM_WEBHOOKS") or None
        config = load_webhooks_file(path) if path else WebhooksConfig()
        return cls(path, store_url or env.get("AUTOGLM_STATE_URL") or None, config)
