"""Turn a validated :class:`~autoglm.deploy.schema.DeployConfig` into the parts of a server.

Steps, each a function so the CLI, :mod:`~autoglm.deploy.assembly` and tests can use them one by one:

1. :func:`plan_lines` - what will be served, printed by ``--dry-run`` (secrets shown as ``set``);
2. :func:`pull_models` - fetch missing weights with progress (:func:`~autoglm.hub.resolve.resolve_model`);
3. :func:`build_router` - one engine per local model x replica (:func:`~autoglm.engine.base.create_engine`),
   one :class:`~autoglm.gateway.upstream.Upstream` per remote URL, all behind a
   :class:`~autoglm.gateway.router.Router`;
4. :func:`gateway_settings` and :func:`ensure_keys` - the gateway's settings, and the declared API keys
   created in the state store when missing (a new key is returned once, for printing; never logged);
5. :func:`server_settings` - where and how to serve, the gateway's settings included (None when
   ``gateway.enabled`` is false).

Starting them in order and running the server is :func:`autoglm.deploy.assembly.serve`'s job.
Knows the deploy schema and the parts' settings; not HTTP routes, YAML, argparse or uvicorn.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from autoglm.config import EngineSettings, ServerSettings
from autoglm.deploy.schema import DeployConfig, ModelConfig

__all__ = [
    "plan_lines",
    "engine_settings_for",
    "pull_models",
    "build_router",
    "gateway_settings",
    "ensure_keys",
    "server_settings",
]

Echo = Callable[[str], None]


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def plan_lines(config: DeployConfig) -> list[str]:
    """A human-readable plan; never contains a secret."""
    lines = [f"server: http://{config.server.host}:{config.server.port}/v1 "
             f"(shutdown grace {config.server.shutdown_grace:g}s)"]
    for m in config.models:
        names = m.name + (f" (aliases: {', '.join(m.aliases)})" if m.aliases else "")
        if m.upstream is not None:
            key = ", api key set" if m.upstream.api_key is not None else ""
            target = m.upstream.model or m.name
            lines.append(f"model {names}: remote {', '.join(m.upstream.all_urls)} as {target!r}{key}")
        else:
            extra = [f"engine={m.engine}", f"quantize={m.quantize}", f"device={m.device}",
                     f"max_num_seqs={m.max_num_seqs}"]
            if m.max_model_len:
                extra.append(f"max_model_len={m.max_model_len}")
            lines.append(f"model {names}: local {m.model_source} x{m.replicas} replica(s), {', '.join(extra)}")
        if m.fallback:
            lines.append(f"  fallback: {m.fallback}")
    g = config.gateway
    if g.keys:
        lines.append("keys: " + ", ".join(k.name for k in g.keys) + " (created when missing)")
    lines.append(f"admin key: {'set' if g.admin_key is not None else 'not set'}; cache: {g.cache.backend}; "
                 f"state store: {_redacted(g.state_store) or 'default (sqlite in AUTOGLM_HOME)'}")
    r = config.routing
    lines.append(f"routing: {r.retries} retries, backoff {r.backoff}s, health check every {r.health_check_interval}s")
    b = config.batch
    if b.enabled:
        queue = _redacted(b.queue) or ("redis (gateway.redis_url)" if g.redis_url else "sqlite (the state store)")
        lines.append(f"batch: /v1/batches on {queue}, at most {b.max_concurrency} at once")
    return lines


def _redacted(url: str | None) -> str | None:
    if not url:
        return url
    from autoglm.gateway.store._base import redact_url

    return redact_url(url)


def engine_settings_for(model: ModelConfig, base: EngineSettings | None = None) -> EngineSettings:
    """EngineSettings for one local model (store dir, offline mode and endpoints from ``base``)."""
    return replace(
        base or EngineSettings(),
        model=model.model_source, served_model_name=model.name, engine=model.engine, quantize=model.quantize,
        device=model.device, max_model_len=model.max_model_len, max_num_seqs=model.max_num_seqs,
        max_queue=model.max_queue, prefill_chunk=model.prefill_chunk, prefix_cache_tokens=model.prefix_cache_tokens,
        request_timeout=model.request_timeout, guided_backend=model.guided_backend,
        guided_pick_first=model.guided_pick_first,
        revision=model.revision, num_threads=model.num_threads,
    )


def pull_models(config: DeployConfig, base: EngineSettings | None = None, *, progress: bool = True,
                echo: Echo = print) -> None:
    """Make every local model's files available (download with a progress bar when missing)."""
    from autoglm.hub.gguf_repo import fetch_gguf, parse_gguf_ref
    from autoglm.hub.resolve import resolve_model

    done: set[tuple[str, str | None]] = set()
    for m in config.models:
        if m.upstream is not None or (m.model_source, m.revision) in done:
            continue
        if m.model_source.lower().endswith(".gguf"):  # a file the llama.cpp engine reads as it is
            continue
        done.add((m.model_source, m.revision))
        settings = engine_settings_for(m, base)
        echo(f"autoglm: checking {m.model_source} ...")
        ref = parse_gguf_ref(m.model_source)
        if ref is not None:  # org/repo:TAG: only that quantization's file(s)
            path = fetch_gguf(ref, settings, progress=progress)
            echo(f"autoglm: {m.model_source} is ready (huggingface: {path})")
            continue
        resolved = resolve_model(m.model_source, settings, progress=progress)
        echo(f"autoglm: {m.model_source} is ready ({resolved.source}: {resolved.path})")


def build_router(config: DeployConfig, base: EngineSettings | None = None) -> Any:
    """Engines (built, not started) and upstreams behind one :class:`Router`."""
    from autoglm.engine.base import create_engine
    from autoglm.gateway.router import Backend, Route, Router
    from autoglm.gateway.upstream import Upstream

    routes = []
    for m in config.models:
        if m.upstream is not None:
            up = m.upstream
            backends = [Backend(upstream=Upstream(url, api_key=_secret(up.api_key), model=up.model or m.name,
                                                  timeout=up.timeout, connect_timeout=up.connect_timeout))
                        for url in up.all_urls]
        else:
            settings = engine_settings_for(m, base)
            # one replica is labelled by the model's name (metrics, logs), several by name#i
            labels = [m.name] if m.replicas == 1 else [f"{m.name}#{i}" for i in range(m.replicas)]
            backends = [Backend(engine=create_engine(settings), label=label) for label in labels]
        routes.append(Route(m.name, backends, aliases=list(m.aliases), fallback=m.fallback,
                            description=m.description))
    r = config.routing
    from autoglm.gateway.affinity import AffinitySettings

    return Router(routes, retries=r.retries, backoff=r.backoff, health_check_interval=r.health_check_interval,
                  policy=r.policy, affinity=AffinitySettings(block_chars=r.affinity_block_chars))


def gateway_settings(config: DeployConfig) -> Any:
    from autoglm.gateway.facade import GatewaySettings

    g = config.gateway
    return GatewaySettings.from_env(
        store_url=g.state_store, cache_backend=g.cache.backend, cache_url=g.cache.url, cache_ttl=g.cache.ttl,
        cache_max_entries=g.cache.max_entries, cache_max_bytes=g.cache.max_bytes,
        ratelimit_backend=g.rate_limits.backend, redis_url=g.redis_url, redis_prefix=g.redis_prefix,
        admin_key=_secret(g.admin_key),
        key_pepper=_secret(g.key_pepper), metrics_public=g.metrics_public or None,
        model_concurrency={m.name: m.max_concurrency for m in config.models if m.max_concurrency},
        default_rpm=g.rate_limits.rpm, default_tpm=g.rate_limits.tpm,
    )


def ensure_keys(config: DeployConfig, settings: Any) -> list[tuple[str, str]]:
    """Create the declared keys that do not exist yet; return ``[(name, plaintext)]`` for the new ones."""
    if not config.gateway.keys:
        return []
    from autoglm.gateway import keys as keys_mod
    from autoglm.gateway.store import open_store

    created: list[tuple[str, str]] = []
    with open_store(settings.store_url) as store:
        existing = {k.name for k in keys_mod.list_keys(store)}
        for k in config.gateway.keys:
            if k.name in existing:
                continue
            plaintext, _ = keys_mod.create_key(store, k.name, models=k.models, rpm=k.rpm, tpm=k.tpm,
                                               pepper=settings.key_pepper)
            created.append((k.name, plaintext))
    return created


def server_settings(config: DeployConfig) -> ServerSettings:
    s = config.server
    return ServerSettings(host=s.host, port=s.port, log_level=s.log_level, access_log=s.access_log,
                          api_keys=[k.get_secret_value() for k in s.api_keys], shutdown_grace=s.shutdown_grace,
                          max_request_bytes=s.max_request_bytes, max_schema_bytes=s.max_schema_bytes,
                          allow_control_tokens=s.allow_control_tokens,
                          max_image_bytes=s.max_image_bytes, max_images=s.max_images,
                          max_image_pixels=s.max_image_pixels, image_fetch_timeout=s.image_fetch_timeout,
                          image_fetch_private=s.image_fetch_private,
                          embedding_model=s.embedding_model, embedding_truncatable=s.embedding_truncatable,
                          ui=s.ui, grpc_port=s.grpc_port,
                          gateway=gateway_settings(config) if config.gateway.enabled else None,
                          capture=_capture_settings(config), monitoring=_monitor_settings(config),
                          batch=_batch_settings(config))


def _batch_settings(config: DeployConfig) -> Any:
    from autoglm.batch.settings import BatchSettings

    return BatchSettings.from_config(config.batch)


def _monitor_settings(config: DeployConfig) -> Any:
    from autoglm.monitoring.settings import MonitorSettings

    return MonitorSettings.from_config(config.monitoring)


def _capture_settings(config: DeployConfig) -> Any:
    from autoglm.feedback.capture import CaptureSettings

    return CaptureSettings.from_config(config.gateway.capture)
