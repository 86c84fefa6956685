"""``autoglm serve``: load one model and serve it behind the OpenAI-compatible API.

Parses flags into :class:`~autoglm.config.EngineSettings` / :class:`~autoglm.config.ServerSettings`,
builds the engine with :func:`~autoglm.engine.base.create_engine`, starts it (so a bad model name is
one error line, not a traceback from inside the web server), opens the gateway (keys, limits, usage,
response cache: ``--cache``, ``--redis-url``, ``--state-url``, ``--admin-key``, ...; environment
defaults via :meth:`~autoglm.gateway.GatewaySettings.from_env`), configures the JSON access log
(``--access-log``), then runs uvicorn programmatically on the same event loop with the app from
:func:`~autoglm.api.app.build_app`. Ctrl-C stops cleanly.
Portable: no Linux-only calls. Heavy imports happen inside :func:`run`.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from typing import Any, Callable

from autoglm._runtime import run_async, tune_allocator
from autoglm.config import DEVICE_CHOICES, QUANTIZE_CHOICES, EngineSettings, ServerSettings
from autoglm.errors import ConfigError

__all__ = ["register", "run", "settings_from_args"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1..65535)")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model behind an OpenAI-compatible HTTP API",
        description="Load a model and serve /v1/chat/completions, /v1/completions and /v1/models.",
    )
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="serve the models of a deploy file instead (same as `autoglm deploy FILE`); "
                        "--host/--port/--log-level override the file")
    p.add_argument("--model", default="autoglm-demo",
                   help="alias, Hugging Face repo id or local directory (default: autoglm-demo, random weights)")
    p.add_argument("--quantize", default="auto", choices=QUANTIZE_CHOICES, help="precision (default: auto)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to run (default: auto)")
    p.add_argument("--engine", default="auto", help="backend: auto, transformers, ... (default: auto)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", default=8000, type=_port, help="TCP port (default: 8000)")
    p.add_argument("--max-model-len", type=_positive_int, default=None,
                   help="prompt + output tokens per sequence (default: the model's own limit)")
    p.add_argument("--max-num-seqs", type=_positive_int, default=16, help="sequences decoded together (default: 16)")
    p.add_argument("--max-queue", type=_positive_int, default=256,
                   help="waiting requests before answering 429 (default: 256)")
    p.add_argument("--prefill-chunk", type=_non_negative_int, default=512,
                   help="prefill a longer prompt this many tokens per step, so running streams keep going "
                        "(0: whole prompts at once; default: 512)")
    p.add_argument("--prefix-cache-tokens", type=_non_negative_int, default=8192,
                   help="KV cells of finished requests kept so a prompt that starts the same way (a chat's next "
                        "turn) skips re-reading them; transformers engine (0: off; default: 8192)")
    p.add_argument("--request-timeout", type=_positive_float, default=600.0,
                   help="seconds per request before it is stopped (default: 600)")
    p.add_argument("--served-model-name", default=None, help="the name clients use (default: --model)")
    p.add_argument("--api-key", default=None,
                   help="a static key: require it (as 'Authorization: Bearer <key>' or 'x-api-key') on every route "
                        "but /health, in addition to keys made with `autoglm keys create`")
    g = p.add_argument_group("gateway", "keys, rate limits, response cache, usage, metrics")
    g.add_argument("--admin-key", default=None,
                   help="key for /admin/* and /metrics (default: $AUTOGLM_ADMIN_KEY; prefer the variable, "
                        "command lines are visible to other users)")
    g.add_argument("--state-url", default=None,
                   help="state store for keys and usage: sqlite path/URL or postgresql://... "
                        "(default: $AUTOGLM_STATE_URL, else <AUTOGLM_HOME>/state.db)")
    g.add_argument("--cache", default=None, choices=("memory", "sqlite", "redis", "none"),
                   help="response cache for deterministic requests (default: $AUTOGLM_CACHE, else memory)")
    g.add_argument("--cache-url", default=None, help="sqlite file or redis URL of the cache (default: --redis-url)")
    g.add_argument("--cache-ttl", type=_positive_float, default=None, help="seconds a cached response lives (3600)")
    g.add_argument("--redis-url", default=None,
                   help="Redis shared by replicas, e.g. redis://127.0.0.1:6379/0 (default: $AUTOGLM_REDIS_URL)")
    g.add_argument("--redis-prefix", default=None, help="prefix of every Redis key (default: autoglm:)")
    g.add_argument("--ratelimit", default=None, choices=("memory", "redis"),
                   help="where rate-limit buckets live (default: redis when a Redis URL is set, else memory)")
    g.add_argument("--max-concurrency", type=_positive_int, default=None,
                   help="concurrent requests for the served model before 429 (default: no limit)")
    g.add_argument("--metrics-public", action="store_true", help="serve /metrics without a key")
    g.add_argument("--no-gateway", action="store_true",
                   help="no key store, limits or cache: only --api-key protects the server")
    g.add_argument("--access-log", default="-", metavar="PATH",
                   help="JSON-lines access log: '-' for stderr (default), a file path, or 'off'")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="(default: info)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> tuple[EngineSettings, ServerSettings]:
    engine = EngineSettings(
        model=args.model,
        served_model_name=args.served_model_name,
        engine=args.engine,
        quantize=args.quantize,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_queue=args.max_queue,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_tokens=args.prefix_cache_tokens,
        request_timeout=args.request_timeout,
    )
    server = ServerSettings(host=args.host, port=args.port,
                            api_keys=[args.api_key] if args.api_key else [], log_level=args.log_level,
                            access_log=getattr(args, "access_log", "-"),
                            gateway=None if getattr(args, "no_gateway", False) else _gateway_settings(args, engine))
    return engine, server


def _gateway_settings(args: argparse.Namespace, engine: EngineSettings) -> Any:
    from autoglm.gateway.facade import GatewaySettings

    redis_url = getattr(args, "redis_url", None)
    overrides: dict[str, Any] = {
        "store_url": getattr(args, "state_url", None),
        "admin_key": getattr(args, "admin_key", None),
        "redis_url": redis_url,
        "cache_backend": getattr(args, "cache", None),
        "cache_url": getattr(args, "cache_url", None),
        "cache_ttl": getattr(args, "cache_ttl", None),
        "redis_prefix": getattr(args, "redis_prefix", None),
        "ratelimit_backend": getattr(args, "ratelimit", None),
    }
    if getattr(args, "metrics_public", False):
        overrides["metrics_public"] = True
    if getattr(args, "max_concurrency", None):
        overrides["model_concurrency"] = {engine.name: args.max_concurrency}
    settings = GatewaySettings.from_env(**overrides)
    if overrides["ratelimit_backend"] is None and settings.redis_url and settings.ratelimit_backend == "memory":
        settings = GatewaySettings.from_env(**{**overrides, "ratelimit_backend": "redis"})
    if settings.cache_backend == "redis" and not (settings.cache_url or settings.redis_url):
        raise ConfigError("--cache redis needs a Redis URL: pass --redis-url redis://HOST:6379/0 "
                          "(or set AUTOGLM_REDIS_URL)")
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be bound."""
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
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _is_demo(model: str) -> bool:
    try:
        from autoglm.hub.demo import is_demo_model
    except ImportError:
        return model.startswith("autoglm-demo")
    return is_demo_model(model)


async def _open_gateway(server: ServerSettings) -> Any:
    if server.gateway is None:
        return None
    from autoglm.gateway.facade import Gateway

    try:
        gateway = Gateway.from_settings(server.gateway)
    except ConfigError:
        raise
    except Exception as exc:  # a store or Redis that cannot be reached: one line, not a traceback
        raise ConfigError(f"cannot open the gateway ({type(exc).__name__}: {exc}); check --state-url, "
                          "--redis-url and --cache, or pass --no-gateway") from None
    if gateway.cache is not None and server.gateway.cache_backend == "redis":
        try:
            await gateway.cache.get("autoglm-startup-check")
        except Exception as exc:  # noqa: BLE001 - any client error means the URL is unusable
            await gateway.close()
            raise ConfigError(f"cannot reach Redis at the configured URL ({type(exc).__name__}: {exc}); "
                              "start Redis or fix --redis-url") from None
    return gateway


async def _serve(engine_settings: EngineSettings, server: ServerSettings) -> None:
    from autoglm.monitoring.access_log import configure_access_log

    configure_access_log(server.access_log)
    gateway = await _open_gateway(server)
    try:
        await _run_server(engine_settings, server, gateway)
    finally:
        if gateway is not None:
            await gateway.close()


async def _run_server(engine_settings: EngineSettings, server: ServerSettings, gateway: Any) -> None:
    import uvicorn

    from autoglm.api.app import build_app
    from autoglm.engine.base import create_engine

    engine = create_engine(engine_settings)
    try:
        await engine.start()
    except BaseException:
        try:
            await engine.shutdown()
        except Exception:  # noqa: BLE001 - report the start failure, not this one
            pass
        raise
    app = build_app({engine.model_name: engine}, server, gateway=gateway)
    config = uvicorn.Config(app, host=server.host, port=server.port, log_level=server.log_level,
                            lifespan="on", timeout_graceful_shutdown=5)
    url = _url(server.host, server.port)
    print(f"autoglm: serving {engine.model_name!r} at {url}/v1 (OpenAI-compatible; health at {url}/health)",
          flush=True)
    if _is_demo(engine_settings.model):
        print(f"autoglm: note: {engine_settings.model} has random weights: its replies are noise. Use it to try "
              "the API; pass --model for a real model.", flush=True)
    await uvicorn.Server(config).serve()


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        from autoglm.cli.deploy import run_config

        changed = {k: getattr(args, k) for k, default in (("host", "127.0.0.1"), ("port", 8000), ("log_level", "info"))
                   if getattr(args, k) != default}
        return run_config(args.config, **changed)
    engine_settings, server = settings_from_args(args)
    level = "DEBUG" if args.log_level == "trace" else args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    if not _is_loopback(server.host) and not server.api_keys and not (server.gateway and server.gateway.admin_key):
        print(f"autoglm: warning: listening on {server.host} without --api-key or an admin key: unless API keys "
              "exist (`autoglm keys create`), anyone who can reach this machine can use the model.",
              file=sys.stderr, flush=True)
    _check_port_free(server.host, server.port)
    try:
        tune_allocator()
        run_async(_serve(engine_settings, server))
    except KeyboardInterrupt:
        pass  # uvicorn already shut down; Ctrl-C is how a server is meant to stop
    print("autoglm: stopped", file=sys.stderr)
    return 0
