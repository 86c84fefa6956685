"""Turn a validated :class:`~autoglm.deploy.schema.DeployConfig` into a running server.

Steps, each a function so the CLI and tests can use them one by one:

1. :func:`plan_lines` - what will be served, printed by ``--dry-run`` (secrets shown as ``set``);
2. :func:`pull_models` - fetch missing weights with progress (:func:`~autoglm.hub.resolve.resolve_model`);
3. :func:`build_router` - one engine per local model x replica (:func:`~autoglm.engine.base.create_engine`),
   one :class:`~autoglm.gateway.upstream.Upstream` per remote URL, all behind a
   :class:`~autoglm.gateway.router.Router`;
4. :func:`gateway_settings` and :func:`ensure_keys` - the gateway's settings, and the declared API keys
   created in the state store when missing (a new key is returned once, for printing; never logged);
5. :func:`serve` - start engines, build the app, run uvicorn, wait until every model is healthy and print
   the URLs.

Knows the deploy schema and how to assemble the parts; not HTTP routes, YAML or argparse.
"""
from __future__ import annotations

import asyncio
import logging
import time
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
    "serve",
]

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def plan_lines(config: DeployConfig) -> list[str]:
    """A human-readable plan; never contains a secret."""
    lines = [f"server: http://{config.server.host}:{config.server.port}/v1"]
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
        request_timeout=model.request_timeout,
        revision=model.revision,
    )


def pull_models(config: DeployConfig, base: EngineSettings | None = None, *, progress: bool = True,
                echo: Echo = print) -> None:
    """Make every local model's files available (download with a progress bar when missing)."""
    from autoglm.hub.resolve import resolve_model

    done: set[tuple[str, str | None]] = set()
    for m in config.models:
        if m.upstream is not None or (m.model_source, m.revision) in done:
            continue
        done.add((m.model_source, m.revision))
        settings = engine_settings_for(m, base)
        echo(f"autoglm: checking {m.model_source} ...")
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
            backends = [Backend(engine=create_engine(settings), label=f"{m.name}#{i}") for i in range(m.replicas)]
        routes.append(Route(m.name, backends, aliases=list(m.aliases), fallback=m.fallback,
                            description=m.description))
    r = config.routing
    return Router(routes, retries=r.retries, backoff=r.backoff, health_check_interval=r.health_check_interval)


def gateway_settings(config: DeployConfig) -> Any:
    from autoglm.gateway.facade import GatewaySettings

    g = config.gateway
    return GatewaySettings.from_env(
        store_url=g.state_store, cache_backend=g.cache.backend, cache_url=g.cache.url, cache_ttl=g.cache.ttl,
        cache_max_entries=g.cache.max_entries, cache_max_bytes=g.cache.max_bytes,
        ratelimit_backend=g.rate_limits.backend, redis_url=g.redis_url, admin_key=_secret(g.admin_key),
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
    return ServerSettings(host=s.host, port=s.port, log_level=s.log_level, gateway=gateway_settings(config))


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


async def _start_engines(router: Any, echo: Echo) -> None:
    started: list[Any] = []
    try:
        for route in router.routes:
            for backend in route.backends:
                if backend.engine is not None:
                    echo(f"autoglm: starting {backend.label} ...")
                    await backend.engine.start()
                    started.append(backend.engine)
    except BaseException:
        for engine in started:
            try:
                await engine.shutdown()
            except Exception:  # noqa: BLE001 - report the start failure, not this one
                log.debug("shutdown after a failed start failed", exc_info=True)
        raise


async def _wait_ready(router: Any, timeout: float, echo: Echo) -> None:
    await router.check_all()
    deadline = time.monotonic() + timeout
    waiting_said: set[str] = set()
    while True:
        down = [name for name, m in router.health()["models"].items() if m["status"] != "ok"]
        if not down:
            return
        for name in down:
            if name not in waiting_said:
                waiting_said.add(name)
                echo(f"autoglm: waiting for {name} (down); the other models are already served")
        if time.monotonic() > deadline:
            echo(f"autoglm: warning: still down after {timeout:.0f}s: {', '.join(down)}; requests for them get "
                 "their fallback or 503 until the health check sees them up")
            return
        await asyncio.sleep(min(1.0, router.health_check_interval))
        await router.check_all()


async def serve(config: DeployConfig, *, base: EngineSettings | None = None, progress: bool = True,
                echo: Echo = print) -> None:
    """Pull, start engines, build the app, run uvicorn until stopped (see the module docstring)."""
    from autoglm.cli.serve import _open_gateway
    from autoglm.monitoring.access_log import configure_access_log

    server = server_settings(config)
    await asyncio.to_thread(pull_models, config, base, progress=progress, echo=echo)
    for name, plaintext in await asyncio.to_thread(ensure_keys, config, server.gateway):
        echo(f"autoglm: created API key {name!r}: {plaintext}")
        echo("autoglm:   save it now: it is shown only this once (the server keeps only its hash)")
    configure_access_log(server.access_log)
    gateway = await _open_gateway(server)
    try:
        await _serve_with(config, server, gateway, base, echo)
    finally:
        if gateway is not None:
            await gateway.close()


async def _serve_with(config: DeployConfig, server: ServerSettings, gateway: Any, base: EngineSettings | None,
                      echo: Echo) -> None:
    import uvicorn

    from autoglm.api.app import build_app

    router = build_router(config, base)
    await _start_engines(router, echo)
    app = build_app({}, server, router=router, gateway=gateway)
    uv = uvicorn.Server(uvicorn.Config(app, host=server.host, port=server.port, log_level=server.log_level,
                                       lifespan="on", timeout_graceful_shutdown=5))
    task = asyncio.create_task(uv.serve())
    while not uv.started and not task.done():
        await asyncio.sleep(0.05)
    if task.done():  # failed to bind or to start; its exception (or SystemExit) surfaces here
        await task
        return
    await _wait_ready(router, config.routing.ready_timeout, echo)
    url = _url(server.host, server.port)
    for route in router.routes:
        names = ", ".join([route.name, *route.aliases])
        echo(f"autoglm: {names} -> {url}/v1 ({'remote' if route.is_remote else 'local'}, {route.status()})")
    echo(f"autoglm: serving {len(router.routes)} model(s) at {url}/v1 (OpenAI-compatible; health at {url}/health)")
    await task
