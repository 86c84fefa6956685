"""The edge-deployment table: start-up time, memory and throughput of each engine × precision.

:func:`run_deploy_bench` takes one model and, for every (engine, precision) pair this machine can
run, starts ``python -m autoglm serve --model M --engine E --quantize P --no-gateway`` on a free port
(:mod:`autoglm.bench.servers`) and measures, one server at a time:

- start-up: seconds from spawning the process to the first ``GET /health`` answered 200 (polled every
  0.25 s). For the llama.cpp engine, whether the GGUF file was converted during that start or was
  already in the store's cache (``<store>/gguf/<key>/<type>.gguf``, seen by file modification times);
- memory: resident set size of the server process (and any children, via ``psutil``) after one
  warm-up request, and again after the load; the peak (``VmHWM``) where Linux reports it;
- throughput: output tokens per second at each concurrency level, with the ``autoglm bench`` client
  (:mod:`autoglm.bench.client`) and ``ignore_eos`` so every request generates ``max_tokens`` tokens.

Pairs that cannot run here are rows with a reason instead of numbers (int4 through the transformers
engine without CUDA, the llama.cpp engine without its extra, a second precision that maps to the same
GGUF file). A server that fails to start is a failed row; the other rows still run.

The model is resolved (downloaded, or the demo built) before the first timed start, so start-up
never includes a download. Nothing here measures quality; with a demo model (random weights) quality
is meaningless anyway. This module knows command lines, HTTP and process memory, not model code.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoglm.bench.client import BenchError

__all__ = [
    "ENGINES",
    "DEFAULT_PRECISIONS",
    "DeployBenchConfig",
    "Combo",
    "DeployRow",
    "DeployReport",
    "parse_list",
    "plan_combos",
    "run_deploy_bench",
    "format_markdown",
    "default_json_path",
]

ENGINES = ("transformers", "llamacpp")
PRECISIONS = ("auto", "none", "fp32", "fp16", "bf16", "int8", "int4")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8", "int4")
MiB = 2**20

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class DeployBenchConfig:
    model: str
    engines: tuple[str, ...] = ENGINES
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    concurrency: tuple[int, ...] = (1, 8)
    max_tokens: int = 32
    input_len: int = 64  # words per prompt
    num_prompts: int | None = None  # per concurrency level; None: max(4, 2 * level)
    device: str = "auto"
    max_model_len: int | None = None
    startup_timeout: float = 600.0
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`BenchError` naming the first bad value and what to use instead."""
        if not self.model:
            raise BenchError("no model given: `autoglm bench deploy MODEL`, e.g. autoglm-demo")
        for e in self.engines:
            if e not in ENGINES:
                raise BenchError(f"--engines: unknown engine {e!r}; use a comma list of {', '.join(ENGINES)}")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise BenchError(f"--precisions: unknown precision {p!r}; use a comma list of {', '.join(PRECISIONS)}")
        if not self.engines or not self.precisions or not self.concurrency:
            raise BenchError("--engines, --precisions and --concurrency each need at least one value")
        for c in self.concurrency:
            if not isinstance(c, int) or c < 1:
                raise BenchError(f"--concurrency: every level must be a positive integer, got {c!r}")
        for name, value in (("--max-tokens", self.max_tokens), ("--input-len", self.input_len),
                            ("--num-prompts", self.num_prompts), ("--max-model-len", self.max_model_len)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BenchError(f"{name} must be a positive integer, got {value!r}")
        if self.startup_timeout <= 0:
            raise BenchError(f"--startup-timeout must be > 0 seconds, got {self.startup_timeout}")

    def prompts_for(self, level: int) -> int:
        return self.num_prompts or max(4, 2 * level)


def parse_list(flag: str, text: str, kind: type = str) -> tuple[Any, ...]:
    """``"a, b,a"`` -> ``("a", "b")`` (order kept, duplicates dropped); ints for ``kind=int``."""
    out: list[Any] = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if kind is int:
            try:
                value: Any = int(item)
            except ValueError:
                raise BenchError(f"{flag}: {item!r} is not a whole number; pass e.g. {flag} 1,8") from None
        else:
            value = item.lower()
        if value not in out:
            out.append(value)
    if not out:
        raise BenchError(f"{flag} {text!r} names nothing; pass a comma-separated list")
    return tuple(out)


@dataclass
class Combo:
    engine: str
    precision: str
    skip: str = ""  # why it does not run here; empty when it runs


def _gguf_type(precision: str, source_dir: Path | None) -> str:
    from autoglm.engine.backends.llamacpp import gguf_type_for

    return gguf_type_for(precision, source_dir)


def plan_combos(cfg: DeployBenchConfig, device: Any, llamacpp_missing: str = "",
                source_dir: Path | None = None) -> list[Combo]:
    """Every requested pair, engine-major, each with the reason it is skipped (or none).

    ``device`` is an :class:`autoglm.quantization.device.DeviceInfo`; ``llamacpp_missing`` the message
    of the error the llama.cpp extra gives when it is not usable here (empty when it is).
    """
    from autoglm.errors import AutoGLMError
    from autoglm.quantization.planner import PRECISIONS as PLANNED, check_supported

    combos: list[Combo] = []
    for engine in cfg.engines:
        seen_gguf: dict[str, str] = {}
        for precision in cfg.precisions:
            skip = ""
            if engine == "llamacpp":
                if llamacpp_missing:
                    skip = llamacpp_missing
                else:
                    gtype = _gguf_type(precision, source_dir)
                    if gtype in seen_gguf:
                        skip = f"runs the same {gtype} GGUF as {seen_gguf[gtype]}"
                    else:
                        seen_gguf[gtype] = precision
            elif precision in PLANNED:
                try:
                    check_supported(precision, device)
                except AutoGLMError as exc:
                    skip = str(exc)
            combos.append(Combo(engine, precision, skip))
    return combos


@dataclass
class DeployRow:
    engine: str
    precision: str
    status: str  # "ok" | "skipped" | "failed"
    reason: str = ""
    startup_s: float | None = None
    gguf: str = ""  # llama.cpp: "<type> converted" or "<type> cached"
    rss_warm_mib: float | None = None
    rss_loaded_mib: float | None = None
    rss_peak_mib: float | None = None  # VmHWM of the server process (Linux only)
    tok_s: dict[int, float] = field(default_factory=dict)  # concurrency -> output tok/s
    ttft_median_ms: dict[int, float] = field(default_factory=dict)
    tpot_median_ms: dict[int, float] = field(default_factory=dict)
    failed_requests: int = 0
    log_path: str = ""


@dataclass
class DeployReport:
    model: str
    device: str
    config: dict[str, Any]
    rows: list[DeployRow]
    is_demo: bool = False
    host: dict[str, Any] = field(default_factory=dict)  # CPU count, Python: what the numbers depend on

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row in d["rows"]:  # JSON object keys are strings
            for k in ("tok_s", "ttft_median_ms", "tpot_median_ms"):
                row[k] = {str(c): v for c, v in row[k].items()}
        return d


# --------------------------------------------------------------------------------------------------
# measuring one server


def _rss_bytes(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return int(total)


def _peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gguf_snapshot(store_dir: Path) -> dict[Path, int]:
    root = store_dir / "gguf"
    if not root.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in root.glob("*/*.gguf")}


def _serve_extra(cfg: DeployBenchConfig, combo: Combo) -> list[str]:
    extra = ["--engine", combo.engine, "--quantize", combo.precision, "--device", cfg.device, "--no-gateway",
             "--max-num-seqs", str(max(cfg.concurrency)), "--log-level", "warning", "--access-log", "off"]
    if cfg.max_model_len:
        extra += ["--max-model-len", str(cfg.max_model_len)]
    return extra


def _bench(cfg: DeployBenchConfig, base_url: str, level: int, num_prompts: int, warmup: bool) -> Any:
    from autoglm.bench.client import BenchConfig, run_benchmark

    return run_benchmark(BenchConfig(
        base_url=base_url, model=cfg.model, num_prompts=num_prompts, concurrency=level,
        max_tokens=cfg.max_tokens, input_len=cfg.input_len, ignore_eos=True, warmup=warmup,
        progress=cfg.progress and not warmup, seed=0))


def measure_combo(cfg: DeployBenchConfig, combo: Combo, store_dir: Path, log: Log = _stderr,
                  source_dir: Path | None = None) -> DeployRow:
    """Start one server, measure it, stop it. Errors become a failed row (never raised)."""
    from autoglm.bench.servers import ServerProcess, ServerStartError, autoglm_serve_command, free_port

    row = DeployRow(combo.engine, combo.precision, status="failed")
    port = free_port()
    cmd = autoglm_serve_command(cfg.model, port, extra=_serve_extra(cfg, combo))
    srv = ServerProcess(cmd, port, startup_timeout=cfg.startup_timeout, env={"PYTHONUNBUFFERED": "1"},
                        name=f"autoglm serve ({combo.engine}, {combo.precision})")
    row.log_path = str(srv.log_path)
    before = _gguf_snapshot(store_dir) if combo.engine == "llamacpp" else {}
    t0 = time.perf_counter()
    try:
        srv.start()
    except ServerStartError as exc:
        last = [ln for ln in srv.log_tail(40).splitlines() if ln.strip()]
        error = next((ln for ln in reversed(last) if ln.startswith("error:")), last[-1] if last else str(exc))
        row.reason = f"server did not start: {error.strip()[:300]} (log {srv.log_path})"
        log(f"  failed: {row.reason}")
        return row
    except BaseException:  # Ctrl-C while it starts: the server has its own session, stop it too
        srv.stop()
        raise
    try:
        row.startup_s = time.perf_counter() - t0
        if combo.engine == "llamacpp":
            gtype = _gguf_type(combo.precision, source_dir)
            after = _gguf_snapshot(store_dir)
            changed = any(p.name == f"{gtype}.gguf" and before.get(p) != m for p, m in after.items())
            row.gguf = f"{gtype} {'converted' if changed else 'cached'}"
        assert srv.proc is not None
        pid = srv.proc.pid
        log(f"  healthy after {row.startup_s:.1f} s{f' (GGUF {row.gguf})' if row.gguf else ''}; warming up")
        _bench(cfg, srv.base_url, 1, 1, warmup=True)
        row.rss_warm_mib = _rss_bytes(pid) / MiB
        log(f"  RSS after warm-up: {row.rss_warm_mib:.0f} MiB")
        for level in cfg.concurrency:
            n = cfg.prompts_for(level)
            m = _bench(cfg, srv.base_url, level, n, warmup=False)
            row.tok_s[level] = m.output_throughput
            row.ttft_median_ms[level] = m.ttft_ms.median
            row.tpot_median_ms[level] = m.tpot_ms.median
            row.failed_requests += m.failed
            note = f", {m.failed} failed: {m.errors[0] if m.errors else ''}" if m.failed else ""
            log(f"  c={level}: {m.output_throughput:.1f} tok/s ({m.completed}/{n} requests, "
                f"median TTFT {m.ttft_ms.median:.0f} ms, TPOT {m.tpot_ms.median:.1f} ms{note})")
        row.rss_loaded_mib = _rss_bytes(pid) / MiB
        peak = _peak_rss_bytes(pid)
        row.rss_peak_mib = peak / MiB if peak is not None else None
        row.status = "ok" if row.failed_requests == 0 else "failed"
        if row.failed_requests:
            row.reason = f"{row.failed_requests} request(s) failed"
    except BenchError as exc:
        row.reason = f"{exc} (log {srv.log_path})"
        log(f"  failed: {row.reason}")
    except Exception as exc:  # noqa: BLE001 - e.g. the server died mid-run: one failed row, the table goes on
        row.reason = f"{type(exc).__name__}: {exc} (log {srv.log_path})"
        log(f"  failed: {row.reason}")
    finally:
        srv.stop()
    if row.status == "ok":  # keep the server's log only when something went wrong
        srv.log_path.unlink(missing_ok=True)
        row.log_path = ""
    return row


# --------------------------------------------------------------------------------------------------
# the whole table


def _llamacpp_missing() -> str:
    from autoglm.errors import AutoGLMError

    try:
        from autoglm.quantization.gguf import require_gguf, require_llama_cpp

        require_gguf()
        require_llama_cpp()
    except AutoGLMError as exc:
        return str(exc)
    return ""


def run_deploy_bench(cfg: DeployBenchConfig, log: Log = _stderr) -> DeployReport:
    """Measure every runnable pair of ``cfg`` one after the other and return the report."""
    cfg.validate()
    try:
        import psutil  # noqa: F401 - fail before any server starts
    except ImportError:
        raise BenchError("`autoglm bench deploy` measures memory with psutil: pip install psutil") from None
    from autoglm.config import EngineSettings
    from autoglm.hub.demo import is_demo_model
    from autoglm.hub.resolve import resolve_model
    from autoglm.quantization.device import detect_device

    device = detect_device(cfg.device)
    settings = EngineSettings(model=cfg.model, device=cfg.device)
    log(f"autoglm bench deploy: resolving {cfg.model} (downloaded or built now, so no start-up includes it)")
    resolved = resolve_model(cfg.model, settings, progress=cfg.progress)
    source_dir = resolved.path
    missing = _llamacpp_missing() if "llamacpp" in cfg.engines else ""
    combos = plan_combos(cfg, device, missing, source_dir)
    todo = [c for c in combos if not c.skip]
    log(f"autoglm bench deploy: {cfg.model} on {device.kind} ({device.name}); {len(todo)} server(s) to measure, "
        f"{len(combos) - len(todo)} skipped")
    rows: list[DeployRow] = []
    done = 0
    for combo in combos:
        if combo.skip:
            rows.append(DeployRow(combo.engine, combo.precision, status="skipped", reason=combo.skip))
            log(f"  skip {combo.engine} {combo.precision}: {combo.skip}")
            continue
        done += 1
        log(f"[{done}/{len(todo)}] {combo.engine} {combo.precision}: starting `autoglm serve`")
        rows.append(measure_combo(cfg, combo, settings.store_dir, log, source_dir))
    config = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    return DeployReport(model=cfg.model, device=f"{device.kind} ({device.name})", config=config, rows=rows,
                        is_demo=is_demo_model(cfg.model), host=_host_summary())


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def format_markdown(report: DeployReport) -> str:
    """The table (Markdown) and the notes that go with it."""
    levels = list(report.config["concurrency"])
    head = ["engine", "precision", "start-up s", "RSS MiB warm", "RSS MiB loaded",
            *[f"tok/s c={c}" for c in levels], "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 3) + ["---"]) + "|"]
    for r in report.rows:
        if r.status == "skipped":
            notes = f"skipped: {r.reason}"
        elif r.status == "failed":
            notes = f"failed: {r.reason}"
        else:
            notes = f"GGUF {r.gguf}" if r.gguf else ""
        if r.rss_peak_mib is not None and r.status == "ok":
            notes = "; ".join(filter(None, [notes, f"peak {r.rss_peak_mib:.0f} MiB"]))
        cells = [r.engine, r.precision, _num(r.startup_s), _num(r.rss_warm_mib, "{:.0f}"),
                 _num(r.rss_loaded_mib, "{:.0f}"), *[_num(r.tok_s.get(c)) for c in levels], notes.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = report.config
    per_level = (f"{cfg['num_prompts']} requests" if cfg.get("num_prompts")
                 else "max(4, 2×c) requests")
    out = [f"Deployment table: {report.model} on {report.device}", "", *lines, "",
           f"{per_level} per concurrency level, {cfg['max_tokens']} output tokens each (ignore_eos), "
           f"prompts of ~{cfg['input_len']} words; start-up = process spawn to /health 200; RSS of the server "
           "process after one warm-up request and after the load.",
           "This table measures speed and memory only, not output quality."]
    if report.is_demo:
        out.append(f"note: {report.model} has random weights, so its output quality is meaningless here; compare "
                   "precisions on a real model (`autoglm quantize MODEL --to int8` reports quality).")
    return "\n".join(out)


def default_json_path(model: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(model).name or "model")
    return Path(f"bench-deploy-{safe}.json")


def _host_summary() -> dict[str, Any]:
    import platform

    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
