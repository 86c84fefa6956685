"""``autoglm serve``: serve one model behind the OpenAI-compatible API.

A deploy with one model: :func:`deploy_config_from_args` turns the flags into a
:class:`~autoglm.deploy.schema.DeployConfig` (the gateway's environment defaults -- ``AUTOGLM_CACHE``,
``AUTOGLM_REDIS_URL``, ... -- resolved by :meth:`~autoglm.gateway.GatewaySettings.from_env`), and
:func:`~autoglm.deploy.assembly.serve` runs it exactly as ``autoglm deploy`` runs a file: weights
pulled, the engine started before the port opens (a bad model name is one error line), gateway, access
log, uvicorn. SIGTERM or Ctrl-C drains: new requests get 503, running ones get ``--shutdown-grace``
seconds, then the process exits 0. ``--config FILE`` is ``autoglm deploy FILE``.
Portable: no Linux-only calls. Heavy imports happen inside :func:`run`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable

from autoglm._runtime import run_async, tune_allocator
from autoglm.config import DEVICE_CHOICES, QUANTIZE_CHOICES, EngineSettings, ServerSettings
from autoglm.errors import ConfigError

if TYPE_CHECKING:
    from autoglm.deploy.schema import DeployConfig

__all__ = ["register", "run", "settings_from_args", "deploy_config_from_args"]

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


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


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
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for the engine (default: torch's / llama.cpp's own; 1 is faster on a CPU that "
                        "other work shares)")
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
    lim = p.add_argument_group("request limits", "what one request may cost")
    lim.add_argument("--max-request-bytes", type=_int_at_least(1024), metavar="N",
                     default=ServerSettings.max_request_bytes,
                     help="larger request bodies get 413 before anything parses them (default: 4194304, 4 MiB)")
    lim.add_argument("--max-schema-bytes", type=_int_at_least(256), metavar="N",
                     default=ServerSettings.max_schema_bytes,
                     help="larger JSON schemas (response_format, tools) get 400 (default: 131072, 128 KiB)")
    lim.add_argument("--max-image-bytes", type=_int_at_least(1024), metavar="N", default=ServerSettings.max_image_bytes,
                     help="larger images in chat messages get 400 (default: 10485760, 10 MiB)")
    lim.add_argument("--max-images", type=_non_negative_int, metavar="N", default=ServerSettings.max_images,
                     help="more images in one request get 400 (default: 8)")
    lim.add_argument("--max-image-pixels", type=_positive_int, metavar="N", default=ServerSettings.max_image_pixels,
                     help="images of more pixels (width x height) get 400 (default: 16777216, 4096x4096)")
    lim.add_argument("--image-fetch-timeout", type=_positive_float, metavar="S",
                     default=ServerSettings.image_fetch_timeout,
                     help="seconds to fetch an http(s) image_url before a 400 (default: 10)")
    lim.add_argument("--image-fetch-private", action="store_true",
                     help="let image URLs name loopback and private addresses (default: refused)")
    p.add_argument("--embedding-model", metavar="NAME", default=None,
                   help="also serve POST /v1/embeddings: 'minilm' (packaged all-MiniLM-L6-v2, offline; the recommend "
                        "extra) or a sentence-transformers model name or path")
    p.add_argument("--embedding-truncatable", action="store_true",
                   help="the embedding model was trained for shorter `dimensions` (Matryoshka): allow them")
    lim.add_argument("--allow-control-tokens", action="store_true",
                     help="let text such as '<|user|>' in a message be the real control token (default: off, "
                          "it is kept as plain text)")
    p.add_argument("--shutdown-grace", type=_non_negative_float, default=ServerSettings.shutdown_grace, metavar="S",
                   help="on SIGTERM or Ctrl-C: seconds running requests and streams get to finish (new ones get "
                        "503) before they are stopped with an error event (default: 30)")
    p.add_argument("--ui", dest="ui", action=argparse.BooleanOptionalAction, default=None,
                   help="the web console at /ui (default: on when --host is a loopback address; --no-ui: off)")
    b = p.add_argument_group("batch", "the Batch API (/v1/files, /v1/batches) and its queue")
    b.add_argument("--batch-queue", default=None, metavar="URL",
                   help="redis://HOST:6379/0, nats://HOST:4222, amqp://USER:PASS@HOST:5672/ or sqlite (a table in the "
                        "state store; default: --redis-url when set, else sqlite)")
    b.add_argument("--batch-queue-name", default="autoglm-batch", metavar="NAME",
                   help="stream / queue name on the broker (default: autoglm-batch)")
    b.add_argument("--batch-max-concurrency", type=_positive_int, default=4, metavar="N",
                   help="batch requests running at once (default: 4)")
    b.add_argument("--batch-max-waiting", type=_non_negative_int, default=0, metavar="N",
                   help="start a batch request only while at most N requests wait in the engine (default: 0)")
    b.add_argument("--batch-lease", type=_positive_float, default=60.0, metavar="S",
                   help="seconds before a dead worker's unfinished batch request runs again (default: 60)")
    p.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                   help="also serve gRPC on PORT: streaming generate (autoglm.v1.Generation) and the KServe V2 "
                        "inference protocol, behind the same keys and limits (the grpc extra)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="(default: info)")
    p.set_defaults(func=run)


_IMAGE_LIMITS = ("max_image_bytes", "max_images", "max_image_pixels", "image_fetch_timeout", "image_fetch_private")


def deploy_config_from_args(args: argparse.Namespace) -> DeployConfig:
    """The one-model DeployConfig these flags mean; environment defaults of the gateway resolved here."""
    from pydantic import ValidationError

    from autoglm.deploy.schema import (
        BatchConfig,
        CacheConfig,
        DeployConfig,
        GatewayConfig,
        ModelConfig,
        RateLimitConfig,
        ServerConfig,
    )

    name = args.served_model_name or args.model
    try:
        model = ModelConfig(
            name=name, source=args.model, engine=args.engine, quantize=args.quantize, device=args.device,
            max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
            prefill_chunk=args.prefill_chunk, prefix_cache_tokens=args.prefix_cache_tokens,
            request_timeout=args.request_timeout, max_concurrency=getattr(args, "max_concurrency", None),
            num_threads=getattr(args, "threads", None),
        )
        if getattr(args, "no_gateway", False):
            gateway = GatewayConfig(enabled=False)
        else:
            gw = _gateway_settings(args, name)
            gateway = GatewayConfig(
                admin_key=gw.admin_key, key_pepper=gw.key_pepper, state_store=gw.store_url, redis_url=gw.redis_url,
                redis_prefix=gw.redis_prefix, metrics_public=gw.metrics_public,
                rate_limits=RateLimitConfig(backend=gw.ratelimit_backend, rpm=gw.default_rpm, tpm=gw.default_tpm),
                cache=CacheConfig(backend=gw.cache_backend, url=gw.cache_url, ttl=gw.cache_ttl,
                                  max_entries=gw.cache_max_entries, max_bytes=gw.cache_max_bytes),
            )
        server = ServerConfig(host=args.host, port=args.port, log_level=args.log_level,
                              access_log=getattr(args, "access_log", "-"),
                              api_keys=[args.api_key] if args.api_key else [],
                              shutdown_grace=getattr(args, "shutdown_grace", ServerSettings.shutdown_grace),
                              max_request_bytes=getattr(args, "max_request_bytes", ServerSettings.max_request_bytes),
                              max_schema_bytes=getattr(args, "max_schema_bytes", ServerSettings.max_schema_bytes),
                              allow_control_tokens=getattr(args, "allow_control_tokens", False),
                              **{k: getattr(args, k) for k in _IMAGE_LIMITS if hasattr(args, k)},
                              embedding_model=getattr(args, "embedding_model", None),
                              embedding_truncatable=getattr(args, "embedding_truncatable", False),
                              ui=getattr(args, "ui", None), grpc_port=getattr(args, "grpc_port", None))
        batch = BatchConfig(queue=getattr(args, "batch_queue", None),
                            queue_name=getattr(args, "batch_queue_name", "autoglm-batch"),
                            max_concurrency=getattr(args, "batch_max_concurrency", 4),
                            max_waiting=getattr(args, "batch_max_waiting", 0),
                            lease_seconds=getattr(args, "batch_lease", 60.0))
        return DeployConfig(models=[model], gateway=gateway, server=server, batch=batch)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise ConfigError(f"autoglm serve: {where}: {err['msg']}") from None


def settings_from_args(args: argparse.Namespace) -> tuple[EngineSettings, ServerSettings]:
    """The engine and server settings ``autoglm serve`` runs with (read off :func:`deploy_config_from_args`)."""
    from autoglm.deploy.runner import engine_settings_for, server_settings

    config = deploy_config_from_args(args)
    return engine_settings_for(config.models[0]), server_settings(config)


def _gateway_settings(args: argparse.Namespace, model_name: str) -> Any:
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
    settings = GatewaySettings.from_env(**overrides)
    if overrides["ratelimit_backend"] is None and settings.redis_url and settings.ratelimit_backend == "memory":
        settings = GatewaySettings.from_env(**{**overrides, "ratelimit_backend": "redis"})
    if settings.cache_backend == "redis" and not (settings.cache_url or settings.redis_url):
        raise ConfigError("--cache redis needs a Redis URL: pass --redis-url redis://HOST:6379/0 "
                          "(or set AUTOGLM_REDIS_URL)")
    return settings


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        from autoglm.cli.deploy import run_config

        defaults = (("host", "127.0.0.1"), ("port", 8000), ("log_level", "info"),
                    ("shutdown_grace", ServerSettings.shutdown_grace))
        changed = {k: getattr(args, k) for k, default in defaults if getattr(args, k) != default}
        return run_config(args.config, **changed)
    from autoglm.deploy.assembly import check_port_free, is_loopback, serve

    config = deploy_config_from_args(args)
    level = "DEBUG" if args.log_level == "trace" else args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    s = config.server
    if not is_loopback(s.host) and not s.api_keys and not (config.gateway.enabled and config.gateway.admin_key):
        print(f"autoglm: warning: listening on {s.host} without --api-key or an admin key: unless API keys "
              "exist (`autoglm keys create`), anyone who can reach this machine can use the model.",
              file=sys.stderr, flush=True)
    check_port_free(s.host, s.port)
    if s.grpc_port is not None:
        check_port_free(s.host, s.grpc_port)
    try:
        tune_allocator()
        run_async(serve(config, echo=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        pass  # Ctrl-C before the server was up (while loading); once up, a signal drains and returns
    print("autoglm: stopped", file=sys.stderr)
    return 0
