"""The gateway's own deploy file in the cluster: every local model becomes an upstream.

On Kubernetes each local model of the user's deploy file runs in pods of its own (one engine per pod,
``autoglm serve``), and the gateway is a separate Deployment running ``autoglm deploy`` on the file
:func:`gateway_deploy_file` writes: the same names, aliases, fallbacks, concurrency limits,
descriptions and profiles, but every local model is an ``upstream`` pointing at its in-cluster
Service, and remote upstreams stay as they are. Shared state moves to where several gateway
replicas can share it: the key store to PostgreSQL (``${AUTOGLM_STATE_URL}``), rate limits and the
response cache to Redis (``${AUTOGLM_REDIS_URL}``).

No secret is ever written: the admin key, the key pepper, static API keys, the upstreams' keys and
the internal key the model pods require appear as ``${VAR}`` references, and :class:`SecretEnv` lists
the variables and the Secret keys the pod fills them from. Declared ``gateway.keys`` are left out
(``autoglm deploy`` would print a new key's plaintext once, into the pod log): the tree's README
gives the ``autoglm keys create`` line for each. Knows the deploy schema; not Kubernetes objects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from autoglm.deploy.schema import DeployConfig

__all__ = ["SecretEnv", "gateway_deploy_file", "SECRET_NAME", "INTERNAL_KEY_ENV", "key_commands"]

SECRET_NAME = "autoglm-secrets"
INTERNAL_KEY_ENV = "AUTOGLM_INTERNAL_KEY"  # the gateway -> model pods key (model pods: --api-key)


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable filled from ``SECRET_NAME``'s ``key``."""

    env: str
    key: str
    optional: bool = False

    def env_var(self, secret: str = SECRET_NAME) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": secret, "key": self.key}
        if self.optional:
            ref["optional"] = True
        return {"name": self.env, "valueFrom": {"secretKeyRef": ref}}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def gateway_deploy_file(config: DeployConfig, urls: dict[str, str]) -> tuple[dict[str, Any], list[SecretEnv]]:
    """``(deploy file as a dict, secret variables it references)``; ``urls``: local model -> its ``/v1`` URL."""
    env = [SecretEnv("AUTOGLM_STATE_URL", "state-url"), SecretEnv("AUTOGLM_REDIS_URL", "redis-url"),
           SecretEnv("AUTOGLM_ADMIN_KEY", "admin-key"), SecretEnv(INTERNAL_KEY_ENV, "internal-key")]
    models = []
    for m in config.models:
        out: dict[str, Any] = {"name": m.name}
        if m.aliases:
            out["aliases"] = list(m.aliases)
        if m.description:
            out["description"] = m.description
        if m.fallback:
            out["fallback"] = m.fallback
        if m.max_concurrency:
            out["max_concurrency"] = m.max_concurrency
        if m.profile is not None:
            out["profile"] = m.profile.model_dump(mode="json", exclude_defaults=True)
        if m.upstream is None:
            out["upstream"] = {"url": urls[m.name], "model": m.name, "api_key": f"${{{INTERNAL_KEY_ENV}}}",
                               "timeout": m.request_timeout + 30}
        else:
            up = m.upstream
            upstream: dict[str, Any] = {("url" if up.url else "urls"): up.url or list(up.urls),
                                        "timeout": up.timeout, "connect_timeout": up.connect_timeout}
            if up.model:
                upstream["model"] = up.model
            if up.api_key is not None:
                var = f"AUTOGLM_UPSTREAM_{_slug(m.name)}_KEY"
                env.append(SecretEnv(var, f"upstream-{re.sub(r'[^a-z0-9]+', '-', m.name.lower()).strip('-')}-key"))
                upstream["api_key"] = f"${{{var}}}"
            out["upstream"] = upstream
        models.append(out)

    g = config.gateway
    gateway: dict[str, Any] = {
        "admin_key": "${AUTOGLM_ADMIN_KEY}",
        "state_store": "${AUTOGLM_STATE_URL}",
        "redis_url": "${AUTOGLM_REDIS_URL}",
        "rate_limits": {"backend": "redis", **g.rate_limits.model_dump(exclude={"backend"}, exclude_none=True)},
        "cache": {"backend": "none" if g.cache.backend == "none" else "redis", "ttl": g.cache.ttl,
                  "max_entries": g.cache.max_entries, "max_bytes": g.cache.max_bytes},
        "metrics_public": g.metrics_public,
    }
    if not g.enabled:
        gateway = {"enabled": False}
    if g.key_pepper is not None:
        env.append(SecretEnv("AUTOGLM_KEY_PEPPER", "key-pepper"))
        gateway["key_pepper"] = "${AUTOGLM_KEY_PEPPER}"
    if g.redis_prefix:
        gateway["redis_prefix"] = g.redis_prefix
    if g.capture.enabled or g.capture.keys:
        gateway["capture"] = g.capture.model_dump(mode="json")

    s = config.server
    server: dict[str, Any] = {"host": "0.0.0.0", "port": s.port, "log_level": s.log_level, "access_log": s.access_log,
                              "shutdown_grace": s.shutdown_grace, "max_request_bytes": s.max_request_bytes,
                              "max_schema_bytes": s.max_schema_bytes, "allow_control_tokens": s.allow_control_tokens}
    if s.api_keys:
        server["api_keys"] = []
        for i in range(len(s.api_keys)):
            env.append(SecretEnv(f"AUTOGLM_API_KEY_{i}", f"api-key-{i}"))
            server["api_keys"].append(f"${{AUTOGLM_API_KEY_{i}}}")
    out_file: dict[str, Any] = {"models": models, "gateway": gateway, "server": server,
                                "routing": config.routing.model_dump(mode="json")}
    if config.recommend is not None:
        out_file["recommend"] = config.recommend.model_dump(mode="json", exclude_none=True)
    return out_file, env


def key_commands(config: DeployConfig, workload: str = "deploy/autoglm-gateway") -> list[str]:
    """``kubectl exec ... autoglm keys create`` for each declared key (the plaintext is shown once, there)."""
    lines = []
    for k in config.gateway.keys:
        flags = f" --models {','.join(k.models)}" if k.models else ""
        flags += f" --rpm {k.rpm}" if k.rpm else ""
        flags += f" --tpm {k.tpm}" if k.tpm else ""
        lines.append(f"kubectl exec {workload} -- autoglm keys create --name {k.name}{flags}")
    return lines
