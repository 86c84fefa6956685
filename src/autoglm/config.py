"""Settings, read in one place.

:class:`EngineSettings` says how to load and run one model; :class:`ServerSettings` says where and
how to serve. The CLI builds them from flags; the deploy file (``autoglm deploy``) builds them from
YAML. Environment variables are read here and nowhere else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EngineSettings", "ServerSettings", "default_store_dir", "tracking_uri"]

QUANTIZE_CHOICES = ("auto", "none", "fp32", "fp16", "bf16", "int8", "int4")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def default_store_dir() -> Path:
    """Where models live: ``$AUTOGLM_HOME`` or ``~/.cache/autoglm`` (any OS)."""
    env = os.environ.get("AUTOGLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoglm"


def tracking_uri(store_dir: Path | None = None) -> str:
    """MLflow's tracking (and registry) store: ``MLFLOW_TRACKING_URI``, else SQLite under the store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{((store_dir or default_store_dir()) / 'mlflow.db').resolve()}"


def offline_mode() -> bool:
    """``AUTOGLM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): never touch the network."""
    return any(os.environ.get(v, "") in ("1", "true", "yes") for v in ("AUTOGLM_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass
class EngineSettings:
    model: str = "autoglm-demo"
    served_model_name: str | None = None
    engine: str = "auto"  # auto | transformers | llamacpp | vllm
    quantize: str = "auto"  # see QUANTIZE_CHOICES
    device: str = "auto"  # see DEVICE_CHOICES
    max_model_len: int | None = None  # None: the model's own limit (capped by the planner)
    max_num_seqs: int = 16  # sequences decoded together
    max_queue: int = 256  # waiting requests before 429
    prefill_chunk: int = 512  # a longer prompt is prefilled this many tokens per step (0: whole)
    prefix_cache_tokens: int = 8192  # KV cells of finished sequences kept for reuse (0: off)
    guided_backend: str = "auto"  # auto | builtin | llguidance: who computes structured-output masks
    guided_pick_first: bool = True  # sample guided rows unmasked and check the pick where that is exact
    request_timeout: float = 600.0  # seconds, per request
    seed: int = 0
    store_dir: Path = field(default_factory=default_store_dir)
    offline: bool = field(default_factory=offline_mode)
    revision: str | None = None
    source: str = "auto"  # auto | huggingface | modelscope | local
    num_threads: int | None = None  # CPU threads for torch; None = torch's default
    hf_endpoint: str | None = field(default_factory=lambda: os.environ.get("HF_ENDPOINT") or None)
    modelscope_endpoint: str | None = field(default_factory=lambda: os.environ.get("MODELSCOPE_ENDPOINT") or None)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list, repr=False)  # static keys (serve --api-key)
    log_level: str = "info"
    access_log: str = "-"  # "-" stderr, a file path, or "off"
    metrics: bool = True  # serve GET /metrics
    # What one request may cost (see autoglm.api.limits): a larger body is a 413, a larger JSON schema a 400.
    max_request_bytes: int = 4 * 1024 * 1024
    max_schema_bytes: int = 128 * 1024
    allow_control_tokens: bool = False  # True: "<|user|>" typed in a message is the real role token
    # Images in chat messages (vision models, autoglm.api.vision): bytes per image, images per request,
    # pixels per decoded image, seconds to fetch an http(s) URL, and whether a URL may name a private address.
    max_image_bytes: int = 10 * 1024 * 1024
    max_images: int = 8
    max_image_pixels: int = 4096 * 4096
    image_fetch_timeout: float = 10.0
    image_fetch_private: bool = False
    # SIGTERM / Ctrl-C: seconds running requests and streams get to finish before they are stopped
    # (new requests get 503 meanwhile); see autoglm.deploy.shutdown.
    shutdown_grace: float = 30.0
    # An autoglm.gateway.GatewaySettings (keys, limits, cache, state store); None: no gateway.
    # `autoglm serve` builds one with GatewaySettings.from_env, which reads AUTOGLM_STATE_URL,
    # AUTOGLM_ADMIN_KEY, AUTOGLM_KEY_PEPPER, AUTOGLM_REDIS_URL, AUTOGLM_CACHE, AUTOGLM_RATELIMIT.
    gateway: Any = None
    # An autoglm.feedback.CaptureSettings (deploy file: gateway.capture); None: capture off.
    capture: Any = None
    # An autoglm.batch.BatchSettings (deploy file: batch; serve --batch-queue ...); None: the defaults
    # (/v1/batches on, Redis Streams when the gateway has a Redis URL, else a table in the state store).
    batch: Any = None
    # POST /v1/embeddings (autoglm.api.serving_embeddings): "minilm" (the packaged all-MiniLM-L6-v2,
    # offline) or a sentence-transformers model name/path; None: no embeddings. truncatable: the model
    # was trained to be shortened (Matryoshka), so `dimensions` below its size is allowed.
    embedding_model: str | None = None
    embedding_truncatable: bool = False
    # An autoglm.monitoring.settings.MonitorSettings (deploy file: monitoring); None: the defaults (on).
    monitoring: Any = None
    # The web console at /ui (autoglm.console): True/False, or None = on when ``host`` is a loopback address.
    ui: bool | None = None
    # gRPC beside HTTP (autoglm.rpc): the port of the autoglm.v1.Generation and KServe V2 services; None: off.
    grpc_port: int | None = None
