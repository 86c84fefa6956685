"""What ``autoglm tune serve`` searches, for which requests, and what "better" means.

* :class:`Workload` -- the requests every trial gets: synthetic prompts from
  :func:`autoglm.bench.prompts.make_prompts` (``input_len`` words, ``output_tokens`` each), or a
  recorded request log (JSONL of ``{"prompt" | "messages", "max_tokens"}``), sent ``concurrency`` at a time.
* :class:`Objective` -- the metric, its direction and an optional SLO bound; a trial over the bound,
  or with failed requests, is infeasible however fast it was.
* :class:`ServeSpace` -- the choices of each serving setting (the ``autoglm serve`` flags), built by
  :func:`build_space` from the device and the workload; :func:`planner_reason` asks the precision
  planner whether one setting fits memory, so a setting that does not is pruned before any server starts.
* :func:`serve_flags` -- a setting as ``autoglm serve`` flags, naming only what differs from the
  server's own defaults (so the defaults trial is exactly ``autoglm serve --model M``).

It knows nothing about processes, HTTP or Optuna: it is data and arithmetic.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from autoglm.config import EngineSettings
from autoglm.errors import AutoGLMError, ConfigError

__all__ = [
    "Request", "Workload", "Objective", "OBJECTIVES", "SLO_METRICS", "ServeSpace", "PARAMS",
    "server_defaults", "build_space", "planner_reason", "serve_flags", "flat_metrics", "params_key",
]

PARAMS = ("engine", "quantize", "max_num_seqs", "prefill_chunk", "prefix_cache_tokens", "max_model_len")
OBJECTIVES = {  # name -> (metric key of flat_metrics, direction, label)
    "throughput": ("tok_s", "maximize", "output tok/s"),
    "ttft_p99": ("ttft_p99", "minimize", "TTFT p99 ms"),
    "tpot_p99": ("tpot_p99", "minimize", "TPOT p99 ms"),
    "rps_under_slo": ("req_s", "maximize", "req/s"),
}
SLO_METRICS = ("ttft_p99", "tpot_p99", "e2e_p99")
_MAX_NUM_SEQS = (4, 8, 16, 32)
_PREFILL_CHUNKS = (0, 256, 512, 1024)
_PREFIX_CACHE = (0, 8192)


# --------------------------------------------------------------------------------------------------
# workload


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int


@dataclass
class Workload:
    """The requests of one trial; every trial gets the same ones, in the same order."""

    input_len: int = 128  # words per synthetic prompt (autoglm bench --input-len); ~172 demo tokens
    output_tokens: int = 64
    concurrency: int = 16
    num_prompts: int = 32
    seed: int = 0
    request_log: str | None = None  # JSONL; replaces the synthetic prompts (num_prompts: its length)

    def validate(self) -> None:
        for name, value in (("--input-len", self.input_len), ("--output-tokens", self.output_tokens),
                            ("--concurrency", self.concurrency), ("--num-prompts", self.num_prompts)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    def requests(self) -> list[Request]:
        if self.request_log:
            return read_request_log(self.request_log)
        from autoglm.bench.prompts import make_prompts

        return [Request(p, self.output_tokens) for p in make_prompts(self.num_prompts, self.input_len, self.seed)]

    def warmup_prompt(self) -> str:
        """A prompt the timed run never sends: a warm-up on request 0 would hand settings with a prefix
        cache a free hit on it."""
        from autoglm.bench.prompts import make_prompts

        return make_prompts(1, min(self.input_len, 64), seed=self.seed + 7919)[0]

    def describe(self) -> str:
        if self.request_log:
            return f"{len(self.requests())} requests from {self.request_log}, {self.concurrency} concurrent"
        return (f"{self.num_prompts} requests of {self.input_len}-word prompts, {self.output_tokens} output tokens "
                f"(ignore_eos), {self.concurrency} concurrent")

    def key(self) -> str:
        data = asdict(self)
        if self.request_log:  # the log's content, not its name, says which workload it is
            data["request_log"] = hashlib.sha256(Path(self.request_log).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def read_request_log(path: str | Path) -> list[Request]:
    """JSONL, one request a line: ``{"prompt": "..."}`` or ``{"messages": [...]}``, and ``max_tokens``.

    The load generator sends one user message per request, so ``messages`` are sent as their contents
    joined by blank lines (the token count stays close; the roles are lost).
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the request log {str(p)!r}: {exc.strerror or exc}") from None
    out: list[Request] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"not JSON ({exc.msg}); each line must be one JSON object", where=where) from None
        if not isinstance(row, dict):
            raise ConfigError("expected a JSON object with 'prompt' or 'messages'", where=where)
        if isinstance(row.get("prompt"), str):
            prompt = row["prompt"]
        elif isinstance(row.get("messages"), list):
            prompt = "\n\n".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))
        else:
            raise ConfigError("needs 'prompt' (a string) or 'messages' (a list of {role, content})", where=where)
        max_tokens = row.get("max_tokens", row.get("max_completion_tokens", 64))
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}", where=where)
        out.append(Request(prompt, max_tokens))
    if not out:
        raise ConfigError(f"the request log {str(p)!r} has no requests; one JSON object per line")
    return out


# --------------------------------------------------------------------------------------------------
# objective


@dataclass
class Objective:
    """What a trial is scored by. ``slo_ms`` bounds ``slo_metric`` (default: the objective's own
    latency for ttft_p99/tpot_p99, TTFT p99 otherwise); failed requests always make a trial infeasible."""

    name: str = "throughput"
    slo_ms: float | None = None
    slo_metric: str | None = None

    def validate(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"--objective {self.name!r}: use one of {', '.join(OBJECTIVES)}")
        if self.slo_ms is not None and not self.slo_ms > 0:
            raise ConfigError(f"--slo-ms must be a positive number of milliseconds, got {self.slo_ms!r}")
        if self.name == "rps_under_slo" and self.slo_ms is None:
            raise ConfigError("--objective rps_under_slo needs a bound: add --slo-ms N (and --slo-metric, "
                              f"one of {', '.join(SLO_METRICS)}; default ttft_p99)")
        if self.slo_metric is not None and self.slo_metric not in SLO_METRICS:
            raise ConfigError(f"--slo-metric {self.slo_metric!r}: use one of {', '.join(SLO_METRICS)}")

    @property
    def metric(self) -> str:
        return OBJECTIVES[self.name][0]

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.name][1]

    @property
    def label(self) -> str:
        return OBJECTIVES[self.name][2]

    @property
    def bound_metric(self) -> str:
        return self.slo_metric or (self.name if self.name in ("ttft_p99", "tpot_p99") else "ttft_p99")

    def value(self, metrics: Mapping[str, float]) -> float:
        return float(metrics[self.metric])

    def constraints(self, metrics: Mapping[str, float]) -> list[float]:
        """Optuna's convention: each value <= 0 means satisfied (ms over the bound, failed requests)."""
        over = float(metrics[self.bound_metric]) - self.slo_ms if self.slo_ms is not None else 0.0
        return [over, float(metrics.get("failed", 0))]

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(c <= 0 for c in self.constraints(metrics))

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def describe(self) -> str:
        text = f"{self.name} ({self.label}, {self.direction})"
        if self.slo_ms is not None:
            text += f", {self.bound_metric} <= {self.slo_ms:g} ms"
        return text


def flat_metrics(m: Any) -> dict[str, float]:
    """The numbers of a :class:`~autoglm.bench.metrics.BenchmarkMetrics` that the table and the objective use."""
    return {
        "tok_s": m.output_throughput, "req_s": m.request_throughput,
        "ttft_p50": m.ttft_ms.median, "ttft_p99": m.ttft_ms.p99,
        "tpot_p50": m.tpot_ms.median, "tpot_p99": m.tpot_ms.p99, "e2e_p99": m.e2e_ms.p99,
        "completed": m.completed, "failed": m.failed, "duration_s": m.duration_s,
        "prompt_tokens_mean": m.total_input_tokens / m.completed if m.completed else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# space


@dataclass
class ServeSpace:
    """The choices of every serving setting. Every choice list contains the server's default."""

    engine: tuple[str, ...]
    quantize: tuple[str, ...]
    max_num_seqs: tuple[int, ...]
    prefill_chunk: tuple[int, ...]
    prefix_cache_tokens: tuple[int, ...]
    max_model_len: tuple[int, ...]
    defaults: dict[str, Any] = field(default_factory=dict)  # the server's own settings, resolved
    need_tokens: int = 0  # the workload's longest prompt + its output

    def choices(self) -> dict[str, tuple[Any, ...]]:
        return {k: getattr(self, k) for k in PARAMS}

    def size(self) -> int:
        n = 1
        for values in self.choices().values():
            n *= len(values)
        return n

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.choices(), sort_keys=True).encode()).hexdigest()[:10]


def server_defaults(engine: str, max_model_len: int) -> dict[str, Any]:
    """``autoglm serve --model M`` with no flags, with ``engine`` and ``max_model_len`` resolved
    (``--engine auto`` and the planner's default length), read from :class:`EngineSettings`."""
    s = EngineSettings()
    return {"engine": engine, "quantize": s.quantize, "max_num_seqs": s.max_num_seqs,
            "prefill_chunk": s.prefill_chunk, "prefix_cache_tokens": s.prefix_cache_tokens,
            "max_model_len": max_model_len}


def _quantize_choices(device_kind: str) -> tuple[str, ...]:
    # "auto" is the planner's pick (int8 on CPU, bf16 on CUDA); the others are what it does not pick.
    # fp16/bf16 on CPU are slow matmuls (the planner says so), so they are left to an override.
    if device_kind == "cuda":
        return ("auto", "int8", "int4")
    if device_kind == "mps":
        return ("auto",)
    return ("auto", "none")


def _length_choices(need: int, default_len: int, limit: int) -> tuple[int, ...]:
    lo = -(-(need + 16) // 256) * 256  # a margin for the chat template; a multiple of 256
    values = {min(lo, limit), default_len}
    if lo * 4 <= default_len:
        values.add(lo * 4)
    return tuple(sorted(v for v in values if v <= limit))


def _as_tuple(name: str, values: Sequence[Any], kind: type) -> tuple[Any, ...]:
    out: list[Any] = []
    for v in values:
        try:
            v = kind(v) if kind is not str else str(v).strip().lower()
        except (TypeError, ValueError):
            raise ConfigError(f"--{name.replace('_', '-')}: {v!r} is not a {'whole number' if kind is int else 'name'}"
                              ) from None
        if kind is int and v < (0 if name in ("prefill_chunk", "prefix_cache_tokens") else 1):
            raise ConfigError(f"--{name.replace('_', '-')}: {v} is out of range")
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigError(f"--{name.replace('_', '-')} names nothing; pass a comma-separated list")
    return tuple(out)


def build_space(*, arch: Any, device_kind: str, engines: Sequence[str], default_engine: str, need_tokens: int,
                overrides: Mapping[str, Sequence[Any]] | None = None) -> ServeSpace:
    """The space for this device and workload; ``overrides`` replace a setting's choices (the server's
    default is added back to each, because the defaults are always measured and compared)."""
    from autoglm.quantization.planner import DEFAULT_MAX_MODEL_LEN

    from autoglm.config import QUANTIZE_CHOICES

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PARAMS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}: the space has {', '.join(PARAMS)}")
    limit = arch.max_position_embeddings
    default_len = min(limit, DEFAULT_MAX_MODEL_LEN)
    if need_tokens > limit:
        raise ConfigError(f"the workload needs {need_tokens} tokens per request (prompt + output) but the model "
                          f"allows {limit}; use shorter prompts or fewer output tokens")
    defaults = server_defaults(default_engine, default_len)
    base: dict[str, tuple[Any, ...]] = {
        "engine": tuple(engines), "quantize": _quantize_choices(device_kind), "max_num_seqs": _MAX_NUM_SEQS,
        "prefill_chunk": _PREFILL_CHUNKS, "prefix_cache_tokens": _PREFIX_CACHE,
        "max_model_len": _length_choices(need_tokens, default_len, limit),
    }
    space: dict[str, tuple[Any, ...]] = {}
    for name in PARAMS:
        values = _as_tuple(name, overrides.get(name, base[name]), str if name in ("engine", "quantize") else int)
        if name == "quantize":
            bad = [q for q in values if q not in QUANTIZE_CHOICES]
            if bad:
                raise ConfigError(f"--quantize: {bad[0]!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
        if name == "max_model_len":
            bad = [v for v in values if v > limit]
            if bad:
                raise ConfigError(f"--max-model-len {bad[0]} exceeds the model's limit of {limit} tokens")
        if defaults[name] not in values:
            values = (defaults[name], *values)
        space[name] = values
    return ServeSpace(**space, defaults=defaults, need_tokens=need_tokens)


def planner_reason(params: Mapping[str, Any], *, arch: Any, device: Any, need_tokens: int) -> str | None:
    """Why ``params`` cannot serve this workload here (the planner would not fit it, or the context is too
    short), or None when it fits. For the llama.cpp engine this is the transformers engine's estimate."""
    from autoglm.quantization.planner import plan_precision

    seqs, length = int(params["max_num_seqs"]), int(params["max_model_len"])
    if length < need_tokens:
        return f"max_model_len {length} < {need_tokens} tokens the workload needs (prompt + output)"
    try:
        plan = plan_precision(arch, device, requested=str(params["quantize"]), max_model_len=length,
                              max_num_seqs=seqs, extra_kv_tokens=int(params["prefix_cache_tokens"]))
    except AutoGLMError as exc:
        return f"planner: {exc}"
    if plan.max_num_seqs < seqs or plan.max_model_len < length:
        gib = 1024**3
        row = next(r for r in plan.rows if r.precision == plan.precision)
        return (f"planner: does not fit {plan.budget_bytes / gib:.2f} GiB; it would lower max_num_seqs {seqs} -> "
                f"{plan.max_num_seqs}, max_model_len {length} -> {plan.max_model_len} "
                f"({plan.precision} at those: {max(row.total_bytes, row.peak_bytes) / gib:.2f} GiB)")
    return None


def serve_flags(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """``autoglm serve`` flags for ``params``, only those that differ from ``defaults``."""
    out: list[str] = []
    for name in PARAMS:
        if params[name] != defaults[name]:
            out += [f"--{name.replace('_', '-')}", str(params[name])]
    return out


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps({k: params[k] for k in PARAMS}, sort_keys=True)
