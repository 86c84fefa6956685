"""The one serving assembly: a :class:`~autoglm.deploy.schema.DeployConfig` -> a running server.

``autoglm deploy FILE`` serves the models of a file; ``autoglm serve --model M`` is a deploy with one
model (its flags build the DeployConfig). Both go through :func:`serve`, so the two cannot drift.

- :func:`assemble` - the parts, built and not started: the :class:`~autoglm.gateway.router.Router`
  with its engines (:func:`~autoglm.deploy.runner.build_router`), the server settings, the FastAPI app
  from :func:`~autoglm.api.app.build_app` and the :class:`~autoglm.deploy.shutdown.ShutdownGate`
  uvicorn runs. No I/O, so a test can compare what two inputs assemble.
- :func:`open_gateway` - the gateway of the server settings (None without one); a store or Redis that
  cannot be reached is one :class:`~autoglm.errors.ConfigError` line.
- :func:`serve` - pull missing weights, create declared keys, open the access log and the gateway, start
  the engines, run uvicorn (:class:`~autoglm.deploy.shutdown.GracefulServer`) and, with
  ``server.grpc_port``, the gRPC listener (:class:`~autoglm.rpc.server.GrpcServer`, whose calls go through
  the same gated app), wait until every model is healthy, print the URLs; on SIGTERM / Ctrl-C drain for
  ``server.shutdown_grace`` seconds and return.
- :func:`check_port_free` and :func:`is_loopback` - start-up checks a CLI runs before loading a model.

Knows the parts and the order they start in; not argparse, YAML or HTTP routes.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.config import EngineSettings, ServerSettings
from autoglm.deploy.runner import build_router, ensure_keys, pull_models, server_settings
from autoglm.deploy.schema import DeployConfig
from autoglm.errors import ConfigError

__all__ = ["Assembly", "assemble", "open_gateway", "serve", "check_port_free", "is_loopback"]

log = logging.getLogger(__name__)
Echo = Callable[[str], None]

# uvicorn's own wait for connections once the drain is over; the drain already ended every request.
_UVICORN_SHUTDOWN_S = 5.0


@dataclass
class Assembly:
    """What :func:`assemble` built: ``asgi`` (the gated ``app``) is what uvicorn runs."""

    config: DeployConfig
    server: ServerSettings
    router: Any  # autoglm.gateway.router.Router
    app: Any  # fastapi.FastAPI
    asgi: Any  # autoglm.deploy.shutdown.ShutdownGate

    @property
    def engines(self) -> dict[str, Any]:
        """Local engines by backend label."""
        return {b.label: b.engine for r in self.router.routes for b in r.backends if b.engine is not None}


def assemble(config: DeployConfig, *, base: EngineSettings | None = None, gateway: Any = None,
             base_dir: Path | None = None) -> Assembly:
    """Engines (built, not started), router, app and shutdown gate for ``config``; ``base_dir`` is the
    deploy file's folder (relative paths in it, e.g. ``recommend.templates``, start there)."""
    from autoglm.api.app import build_app
    from autoglm.deploy.shutdown import ShutdownGate

    server = server_settings(config)
    router = build_router(config, base)
    if getattr(config, "recommend", None) is not None:  # model "auto": task identification + profiles
        from autoglm.recommend import build_recommender

        router.recommender = build_recommender(config, base_dir=base_dir)
    app = build_app({}, server, router=router, gateway=gateway)
    return Assembly(config=config, server=server, router=router, app=app, asgi=ShutdownGate(app))


async def open_gateway(server: ServerSettings) -> Any:
    """The :class:`~autoglm.gateway.Gateway` of ``server.gateway`` (None when there is none)."""
    if server.gateway is None:
        return None
    from autoglm.gateway.facade import Gateway

    try:
        gateway = Gateway.from_settings(server.gateway)
    except ConfigError:
        raise
    except Exception as exc:  # a store or Redis that cannot be reached: one line, not a traceback
        raise ConfigError(f"cannot open the gateway ({type(exc).__name__}: {exc}); check the state store, the "
                          "Redis URL and the cache (serve: --state-url, --redis-url, --cache, or --no-gateway)"
                          ) from None
    if gateway.cache is not None and server.gateway.cache_backend == "redis":
        try:
            await gateway.cache.get("autoglm-startup-check")
        except Exception as exc:  # noqa: BLE001 - any client error means the URL is unusable
            await gateway.close()
            raise ConfigError(f"cannot reach Redis at the configured URL ({type(exc).__name__}: {exc}); "
                              "start Redis or fix the Redis URL (serve: --redis-url)") from None
    return gateway


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail before loading a model when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc.strerror}; use an IP address such as "
                          "127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if sys.platform != "win32":  # what uvicorn does too; on Windows it would allow port sharing
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running? "
                              "Pass a free --port.") from None


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def _is_demo(model: str) -> bool:
    try:
        from autoglm.hub.demo import is_demo_model
    except ImportError:
        return model.startswith("autoglm-demo")
    return is_demo_model(model)


async def serve(config: DeployConfig, *, base: EngineSettings | None = None, progress: bool = True,
                echo: Echo = print, base_dir: Path | None = None) -> None:
    """Pull, start engines, run uvicorn until a signal drains and stops it (see the module docstring)."""
    from autoglm.monitoring.access_log import configure_access_log

    server = server_settings(config)
    await asyncio.to_thread(pull_models, config, base, progress=progress, echo=echo)
    if server.gateway is not None:
        for name, plaintext in await asyncio.to_thread(ensure_keys, config, server.gateway):
            echo(f"autoglm: created API key {name!r}: {plaintext}")
            echo("autoglm:   save it now: it is shown only this once (the server keeps only its hash)")
    configure_access_log(server.access_log)
    gateway = await open_gateway(server)
    try:
        await _run(assemble(config, base=base, gateway=gateway, base_dir=base_dir), echo)
    finally:
        if gateway is not None:
            await gateway.close()


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


async def _run(parts: Assembly, echo: Echo) -> None:
    import uvicorn

    from autoglm.deploy.shutdown import GracefulServer, drain_on_signal

    server, router, config = parts.server, parts.router, parts.config
    await _start_engines(router, echo)
    for m in config.models:
        if m.upstream is None and _is_demo(m.model_source):
            echo(f"autoglm: note: {m.model_source} has random weights: its replies are noise. Use it to try the "
                 "API; serve a real model for real answers.")
    uv = GracefulServer(uvicorn.Config(parts.asgi, host=server.host, port=server.port, log_level=server.log_level,
                                       lifespan="on", timeout_graceful_shutdown=_UVICORN_SHUTDOWN_S))
    task = asyncio.create_task(uv.serve())
    drain = asyncio.create_task(drain_on_signal(uv, parts.asgi, server.shutdown_grace, echo))
    rpc = None
    try:
        while not uv.started and not task.done():
            await asyncio.sleep(0.05)
        if task.done():  # failed to bind or to start; its exception (or SystemExit) surfaces here
            await task
            return
        if server.grpc_port is not None:  # gRPC calls go through parts.asgi: the same gate, keys and limits
            from autoglm.rpc.server import GrpcServer

            rpc = GrpcServer(parts.asgi, router, host=server.host, port=server.grpc_port)
            await rpc.start()
            echo(f"autoglm: gRPC (autoglm.v1.Generation, KServe V2) at {rpc.target}")
        ready = asyncio.create_task(_wait_ready(router, config.routing.ready_timeout, echo))
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            ready.result()
            url = _url(server.host, server.port)
            for route in router.routes:
                names = ", ".join([route.name, *route.aliases])
                echo(f"autoglm: {names} -> {url}/v1 ({'remote' if route.is_remote else 'local'}, {route.status()})")
            echo(f"autoglm: serving {len(router.routes)} model(s) at {url}/v1 (OpenAI-compatible; health at "
                 f"{url}/health)")
            from autoglm.console import console_enabled

            if console_enabled(server):
                echo(f"autoglm: web console at {url}/ui")
        else:  # stopped while waiting for a model: no need to wait any longer
            ready.cancel()
        await task
    finally:
        drain.cancel()
        if rpc is not None:
            await rpc.stop(grace=1.0)  # the drain already ended its calls (they are requests to parts.asgi)
