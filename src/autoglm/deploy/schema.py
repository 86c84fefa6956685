"""The deploy file's schema: typed, strict pydantic models for ``autoglm deploy FILE.yaml``.

A deploy file has three sections: ``models`` (what to serve: local models with their engine settings
and replicas, or remote OpenAI-compatible upstreams), ``gateway`` (keys, limits, cache, state store)
and ``server`` (where to listen), plus ``routing`` (retries, backoff, health checks) and, optionally,
``recommend`` (``model: "auto"``: task identification and routing by the models' ``profile``). Every model
forbids unknown keys so a typo is an error, never a silently ignored setting. Secrets are
:class:`~pydantic.SecretStr` so they never show up in a repr, a plan or a log.

Cross-field rules that pydantic cannot express per field (unique names, a fallback that names an
existing model) are in :func:`reference_errors`, which returns key paths so the loader can point at
the line. This module knows nothing about YAML, line numbers or how a deployment is started.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from autoglm.config import DEVICE_CHOICES, QUANTIZE_CHOICES
from autoglm.loop.schema import ImproveConfig
from autoglm.recommend.schema import QualityConfig
from autoglm.monitoring.settings import MonitoringConfig

__all__ = [
    "DeployConfig",
    "ModelConfig",
    "UpstreamConfig",
    "GatewayConfig",
    "KeyConfig",
    "RateLimitConfig",
    "CacheConfig",
    "CaptureConfig",
    "BatchConfig",
    "ServerConfig",
    "RoutingConfig",
    "ProfileConfig",
    "RecommendConfig",
    "reference_errors",
]

Quantize = Literal[QUANTIZE_CHOICES]  # type: ignore[valid-type]
Device = Literal[DEVICE_CHOICES]  # type: ignore[valid-type]
Loc = tuple[Union[str, int], ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        # `${VAR:-}` gives "" for an unset variable: treat it as "not given" for optional settings.
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if not (v == "" and k in cls.model_fields and cls.model_fields[k].default is None)}
        return data


class UpstreamConfig(_Strict):
    """A remote OpenAI-compatible server (another autoglm, vLLM, any ``/v1`` API)."""

    url: Optional[str] = None  # base URL, e.g. http://10.0.0.5:8000/v1 (``/v1`` is added when there is no path)
    urls: list[str] = Field(default_factory=list)  # several replicas of the same upstream
    api_key: Optional[SecretStr] = None  # sent as Authorization: Bearer; never logged
    model: Optional[str] = None  # the upstream's name for the model (default: this model's name)
    timeout: PositiveFloat = 600.0  # seconds for a whole response
    connect_timeout: PositiveFloat = 5.0

    @field_validator("url", "urls")
    @classmethod
    def _http_urls(cls, value: Any) -> Any:
        for url in [value] if isinstance(value, str) else value or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected an http:// or https:// URL; got {url!r}")
        return value

    @model_validator(mode="after")
    def _some_url(self) -> UpstreamConfig:
        if not self.url and not self.urls:
            raise ValueError("an upstream needs 'url' (or 'urls' for several replicas)")
        if self.url and self.urls:
            raise ValueError("give either 'url' or 'urls', not both")
        return self

    @property
    def all_urls(self) -> list[str]:
        return [self.url] if self.url else list(self.urls)


class ProfileConfig(_Strict):
    """What a model is good at, for ``model: "auto"`` (see :mod:`autoglm.recommend.route`)."""

    tasks: dict[str, float] = Field(default_factory=dict)  # task name -> quality 0..1
    context_length: Optional[PositiveInt] = None  # default: the model's max_model_len
    modality: list[Literal["text", "image"]] = Field(default_factory=lambda: ["text"])
    cost: float = Field(default=1.0, ge=0)  # relative cost per token

    @field_validator("tasks")
    @classmethod
    def _scores(cls, value: dict[str, float]) -> dict[str, float]:
        for task, score in value.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"the quality of task {task!r} must be between 0 and 1; got {score}")
        return value


class ModelConfig(_Strict):
    """One served model: local (``source``) or remote (``upstream``)."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    fallback: Optional[str] = None  # another model's name, used when this one is down or saturated
    max_concurrency: Optional[PositiveInt] = None  # in-flight requests before 429 (gateway)
    # local models
    source: Optional[str] = None  # alias, org/name repo id or local directory (default: name)
    engine: str = "auto"
    quantize: Quantize = "auto"
    device: Device = "auto"
    max_model_len: Optional[PositiveInt] = None
    max_num_seqs: PositiveInt = 16
    max_queue: PositiveInt = 256
    prefill_chunk: NonNegativeInt = 512  # long prompts are prefilled this many tokens per step (0: whole)
    prefix_cache_tokens: NonNegativeInt = 8192  # finished requests' KV cells kept for reuse (0: off)
    guided_backend: Literal["auto", "builtin", "llguidance"] = "auto"  # structured-output masks
    guided_pick_first: bool = True  # guided rows sampled unmasked, the pick checked (where exact)
    # CPU threads for the engine (None: torch's / llama.cpp's default). 1 on a CPU other work shares: int8
    # linears wait for each other's threads when another process holds a core (benchmarks/bandwidth.py)
    num_threads: Optional[PositiveInt] = None
    request_timeout: PositiveFloat = 600.0
    revision: Optional[str] = None
    replicas: PositiveInt = 1
    # remote models
    upstream: Optional[UpstreamConfig] = None
    profile: Optional[ProfileConfig] = None  # for model "auto"

    @model_validator(mode="after")
    def _local_or_remote(self) -> ModelConfig:
        if self.upstream is not None:
            local = [k for k in ("source", "engine", "quantize", "device", "max_model_len", "max_num_seqs",
                                 "num_threads", "revision", "replicas") if k in self.model_fields_set]
            if local:
                raise ValueError(f"a model with 'upstream' is served remotely; remove the local-only key(s) "
                                 f"{', '.join(local)} (use upstream.urls for replicas)")
        return self

    @property
    def is_remote(self) -> bool:
        return self.upstream is not None

    @property
    def model_source(self) -> str:
        return self.source or self.name


class KeyConfig(_Strict):
    """An API key the deployment makes sure exists (created, and printed once, when missing)."""

    name: str = Field(min_length=1)
    models: Optional[list[str]] = None  # None: every model
    rpm: Optional[PositiveInt] = None
    tpm: Optional[PositiveInt] = None


class RateLimitConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    rpm: Optional[PositiveInt] = None  # defaults for requests without a key (open mode)
    tpm: Optional[PositiveInt] = None


class CacheConfig(_Strict):
    backend: Literal["memory", "sqlite", "redis", "none"] = "memory"
    url: Optional[str] = None
    ttl: PositiveFloat = 3600.0
    max_entries: PositiveInt = 1024
    max_bytes: PositiveInt = 64 * 1024 * 1024


class CaptureConfig(_Strict):
    """Keeping requests and responses so they can be rated (``POST /v1/feedback``); off by default."""

    enabled: bool = False  # capture every key's exchanges
    keys: list[str] = Field(default_factory=list)  # key names captured even when enabled is false
    retention_days: PositiveFloat = 30.0
    max_bytes: PositiveInt = 1024**3  # all captured exchanges together; the oldest are removed first
    max_exchange_bytes: PositiveInt = 1024**2  # one exchange; a larger one is kept without its texts
    redact: Union[bool, list[Literal["email", "phone", "card"]]] = True  # true: all three; false: none
    implicit: bool = True  # regenerations and follow-ups count against the earlier answer


class GatewayConfig(_Strict):
    enabled: bool = True  # False: no key store, limits or cache (``autoglm serve --no-gateway``)
    keys: list[KeyConfig] = Field(default_factory=list)
    admin_key: Optional[SecretStr] = None
    key_pepper: Optional[SecretStr] = None
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    state_store: Optional[str] = None  # sqlite path/URL or postgresql://... (default: <AUTOGLM_HOME>/state.db)
    redis_url: Optional[str] = None
    redis_prefix: Optional[str] = None  # prefix of every Redis key (default: autoglm:)
    metrics_public: bool = False
    capture: CaptureConfig = Field(default_factory=CaptureConfig)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    access_log: str = "-"  # JSON-lines access log: "-" stderr, a file path, or "off"
    api_keys: list[SecretStr] = Field(default_factory=list)  # static keys, besides the gateway's
    shutdown_grace: NonNegativeFloat = 30.0  # seconds running requests get on SIGTERM / Ctrl-C
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # a larger request body is a 413
    max_schema_bytes: int = Field(default=128 * 1024, ge=256)  # a larger JSON schema is a 400
    allow_control_tokens: bool = False  # client text such as "<|user|>" becomes the real control token
    # images in chat messages (vision models): a larger, more numerous or bigger image is a 400
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_images: int = Field(default=8, ge=0)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    image_fetch_timeout: float = Field(default=10.0, gt=0)  # seconds to fetch an http(s) image_url
    image_fetch_private: bool = False  # True: image URLs may name loopback / private addresses
    # POST /v1/embeddings: "minilm" (packaged, offline) or a sentence-transformers model; None: off
    embedding_model: Optional[str] = Field(default=None, min_length=1)
    embedding_truncatable: bool = False  # the model was trained for shorter `dimensions` (Matryoshka)
    ui: Optional[bool] = None  # the web console at /ui; default: on when host is a loopback address
    grpc_port: Optional[int] = Field(default=None, ge=1, le=65535)  # gRPC generate + KServe V2 (grpc extra)


class RoutingConfig(_Strict):
    retries: int = Field(default=2, ge=0, le=10)  # extra attempts after a connection error
    backoff: PositiveFloat = 0.1  # seconds before the first retry; doubles each time
    health_check_interval: PositiveFloat = 5.0  # seconds between upstream health checks
    ready_timeout: PositiveFloat = 600.0  # seconds `autoglm deploy` waits for every model
    # how a model with several replicas picks one: least_outstanding, or prefix_affinity (the replica whose
    # prefix cache holds the prompt's start, within a load bound: autoglm.gateway.affinity)
    policy: Literal["least_outstanding", "prefix_affinity"] = "prefix_affinity"
    affinity_block_chars: int = Field(default=128, ge=16, le=8192)  # prefix granularity, in characters


class RecommendConfig(_Strict):
    """``model: "auto"`` (or another alias named here) routes each request by its identified task."""

    enabled: bool = True
    aliases: list[str] = Field(default_factory=lambda: ["auto"], min_length=1)
    default: Optional[str] = None  # the model for an unknown task (default: the first model)
    encoders: list[Literal["hashing", "minilm", "sentence-transformers"]] = Field(
        default_factory=lambda: ["hashing"], min_length=1)
    sentence_transformer: Optional[str] = None  # model name for the sentence-transformers encoder
    templates: list[str] = Field(default_factory=list)  # extra taxonomy/template YAML files
    threshold: Optional[float] = Field(default=None, ge=0, le=1)  # default: calibrated, else built in
    calibration_dir: Optional[str] = None  # default: <AUTOGLM_HOME>/recommend/calibration
    cost_weight: float = Field(default=0.1, ge=0)
    latency_weight: float = Field(default=0.1, ge=0)
    quality: QualityConfig = Field(default_factory=QualityConfig)  # feedback/evaluations -> quality: recommend.schema


_QUEUE_SCHEMES = ("redis", "rediss", "unix", "nats", "tls", "amqp", "amqps")


class BatchConfig(_Strict):
    """The Batch API (``/v1/files``, ``/v1/batches``): its queue and its share of the engines."""

    enabled: bool = True
    queue: Optional[str] = None  # redis://... | nats://... | amqp://... | sqlite; default: redis_url, else sqlite
    queue_name: str = Field(default="autoglm-batch", min_length=1, max_length=100)
    max_concurrency: PositiveInt = 4  # batch requests running at once per server process
    max_waiting: NonNegativeInt = 0  # start one only while the engines' waiting queues hold at most this many
    lease_seconds: PositiveFloat = 60.0  # a dead worker's unacked request runs again after this long
    max_requests: PositiveInt = 50_000  # lines of one input file
    max_attempts: PositiveInt = 6  # tries of a request refused as overloaded before it fails
    poll_seconds: PositiveFloat = 1.0

    @field_validator("queue")
    @classmethod
    def _scheme(cls, value: Optional[str]) -> Optional[str]:
        if value is None or value in ("sqlite", "store"):
            return value
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in _QUEUE_SCHEMES:
            raise ValueError(f"queue must be redis://HOST:6379/0, nats://HOST:4222, amqp://USER:PASS@HOST:5672/ or "
                             f"sqlite, got {value.split('@')[-1][:60]!r}")
        return value


class DeployConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    recommend: Optional[RecommendConfig] = None
    improve: Optional[ImproveConfig] = None  # the improvement loop (`autoglm loop run`): autoglm.loop.schema
    # drift and quality of the served models (on by default): autoglm.monitoring.settings
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)  # the Batch API's queue and share: autoglm.batch

    def model_named(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name or name in m.aliases:
                return m
        return None


def reference_errors(config: DeployConfig) -> list[tuple[Loc, str]]:
    """Rules across fields, as ``(key path, message)``: unique names, fallbacks and key models that exist."""
    errors: list[tuple[Loc, str]] = []
    seen: dict[str, Loc] = {}
    for i, model in enumerate(config.models):
        for loc, name in [(("models", i, "name"), model.name)] + [
            (("models", i, "aliases", j), a) for j, a in enumerate(model.aliases)
        ]:
            if name in seen:
                first = seen[name]
                errors.append((loc, f"the name {name!r} is already used by models[{first[1]}]; "
                                    "names and aliases must be unique"))
            else:
                seen[name] = loc
    names = list(seen)
    for i, model in enumerate(config.models):
        if model.fallback is None:
            continue
        target = config.model_named(model.fallback)
        if target is None:
            errors.append((("models", i, "fallback"),
                           f"no model is named {model.fallback!r}; use one of {', '.join(names)}"))
        elif target is model:
            errors.append((("models", i, "fallback"), "a model cannot be its own fallback"))
    for i, key in enumerate(config.gateway.keys):
        for j, m in enumerate(key.models or []):
            if config.model_named(m) is None:
                errors.append((("gateway", "keys", i, "models", j),
                               f"no model is named {m!r}; use one of {', '.join(names)}"))
    rec = config.recommend
    if rec is not None:
        for j, alias in enumerate(rec.aliases):
            if alias in seen:
                errors.append((("recommend", "aliases", j), f"{alias!r} is already a model name or alias; "
                                                             "pick another name for automatic routing"))
        if rec.default is not None and config.model_named(rec.default) is None:
            errors.append((("recommend", "default"), f"no model is named {rec.default!r}; use one of "
                                                     f"{', '.join(names)}"))
    key_names = [k.name for k in config.gateway.keys]
    for i, name in enumerate(key_names):
        if name in key_names[:i]:
            errors.append((("gateway", "keys", i, "name"), f"the key name {name!r} is used twice"))
    return errors
