"""Make sure the installed llama.cpp can run on this CPU before the server depends on it.

A llama-cpp-python built with default flags is compiled for the machine that built it
(``GGML_NATIVE``); on a CPU that reports AMX (Intel Sapphire Rapids and later, common on cloud VMs)
its quantized matmul kernels use AMX tile instructions, and where the VM or kernel does not really
allow them the first batched ``q8_0`` step dies with SIGILL, killing the whole process without a word.

:func:`probe` finds that out in a **child process**: it converts the tiny demo model
(``autoglm-demo``, random weights) to the GGUF type the server will use, loads it with the server's
own :class:`~autoglm.engine.backends.llamacpp.LlamaCppRunner` and runs a batched prefill of several
sequences plus a few decode steps. The parent waits with a timeout and reports what happened as a
:class:`ProbeResult`: ``ok``, ``crashed`` (killed by a signal, named), ``timeout`` or ``error`` (the
child raised; its one-line error). A passed probe is remembered in ``<store>/llamacpp-probe.json``,
keyed by the llama-cpp-python version, the mtimes of its shared libraries, the GGUF type and the CPU
flags, so a restart costs nothing and a rebuilt library or another machine is probed again.

:func:`check_llamacpp_cpu` is what a loader calls once, before the real model loads: it probes when
the CPU reports AMX (or always with ``AUTOGLM_LLAMA_PROBE=1``; ``AUTOGLM_LLAMA_PROBE=0`` skips it)
and turns a failed probe into one clear error that says what crashed and how to fix it.

This module imports neither ``llama_cpp`` nor torch in the parent; the child imports what it needs.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoglm.errors import AutoGLMError, ConfigError, UnsupportedError

__all__ = [
    "ProbeResult",
    "cpu_flags",
    "has_amx",
    "probe",
    "check_llamacpp_cpu",
    "probe_type",
    "rebuild_hint",
    "DEFAULT_TIMEOUT",
]

log = logging.getLogger("autoglm.engine")

OK, CRASHED, TIMEOUT, ERROR = "ok", "crashed", "timeout", "error"
DEFAULT_TIMEOUT = 300.0  # seconds; the first probe also builds and converts the demo model
PROBE_MODEL = "autoglm-demo"
CACHE_FILE = "llamacpp-probe.json"
_CACHE_VERSION = 1
_PROBE_TYPES = ("f32", "f16", "q8_0", "q4_k_m")  # what convert_dir can write
_ENV = "AUTOGLM_LLAMA_PROBE"
_ENV_TIMEOUT = "AUTOGLM_LLAMA_PROBE_TIMEOUT"
_REBUILD_ARGS = "-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"

# the child's shape: several sequences in one prefill batch (the batched matmul kernels), then decode steps
_SEQS = 4
_PROMPT_LENS = (24, 17, 31, 9)
_DECODE_STEPS = 3


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found. ``outcome`` is ``ok``, ``crashed``, ``timeout`` or ``error``; ``signal`` is
    the signal's name (``SIGILL``) when crashed; ``stage`` is how far the child got (``prepare``,
    ``load``, ``prefill``, ``decode``, ``done``); ``error`` the child's one-line error; ``cached`` is
    True when the result came from the cache of passed probes (no child ran)."""

    outcome: str
    gguf_type: str
    seconds: float = 0.0
    signal: str | None = None
    stage: str | None = None
    error: str | None = None
    stderr_tail: str = ""
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def describe(self) -> str:
        """One line: what happened, for logs and error messages."""
        where = f" during {self.stage}" if self.stage and self.stage != "done" else ""
        if self.outcome == OK:
            took = " (cached)" if self.cached else f" in {self.seconds:.1f} s"
            return f"llama.cpp {self.gguf_type} probe passed{took}"
        if self.outcome == CRASHED:
            what = _signal_text(self.signal)
            return f"llama.cpp was killed by {self.signal} ({what}){where} on a {self.gguf_type} batch"
        if self.outcome == TIMEOUT:
            return f"llama.cpp did not finish a {self.gguf_type} probe in {self.seconds:.0f} s{where}"
        return f"the llama.cpp {self.gguf_type} probe failed{where}: {self.error}"


# --------------------------------------------------------------------------------------------------
# the CPU


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (the first processor's ``flags`` line of
    ``/proc/cpuinfo``, lower case); an empty set where there is no such file (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return {f.lower() for f in value.split()}
    return set()


def has_amx(flags: set[str] | None = None) -> bool:
    """True when the CPU reports any AMX feature (``amx_tile``, ``amx_int8``, ``amx_bf16``, ...)."""
    return any(f.startswith("amx") for f in (cpu_flags() if flags is None else flags))


def _signal_text(name: str | None) -> str:
    try:
        return signal.strsignal(signal.Signals[name]) or name or "?"  # type: ignore[misc]
    except (KeyError, ValueError):
        return name or "?"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --------------------------------------------------------------------------------------------------
# the cache of passed probes


def _llama_cpp_identity() -> tuple[str, dict[str, int]]:
    """(llama-cpp-python version, {shared library name: mtime_ns}) without importing llama_cpp."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    libs: dict[str, int] = {}
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib_dir = Path(spec.origin).parent / "lib"
        if lib_dir.is_dir():
            for p in sorted(lib_dir.iterdir()):
                if p.is_file() and (p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name):
                    libs[p.name] = p.stat().st_mtime_ns
    return version, libs


def _cache_key(gguf_type: str, flags: set[str]) -> str:
    version, libs = _llama_cpp_identity()
    blob = json.dumps({"v": _CACHE_VERSION, "llama_cpp": version, "libs": libs, "type": gguf_type,
                       "cpu": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    passed = data.get("passed") if isinstance(data, dict) else None
    return passed if isinstance(passed, dict) else {}


def _remember(path: Path, key: str, result: ProbeResult) -> None:
    passed = _read_cache(path)
    passed[key] = {"gguf_type": result.gguf_type, "llama_cpp": _llama_cpp_identity()[0],
                   "seconds": round(result.seconds, 2), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _CACHE_VERSION, "passed": passed}, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only store only costs a probe at the next start
        log.warning("llamacpp probe: could not record the passed probe in %s: %s", path, exc)


# --------------------------------------------------------------------------------------------------
# the probe


def probe_type(gguf_type: str) -> str:
    """The GGUF type a probe uses for ``gguf_type``: itself when the converter writes it, else ``q8_0``
    (a stand-in for other quantized types, e.g. a ``.gguf`` file's own ``q4_0`` or ``q6_k``, which run
    the same quantized matmul kernels)."""
    t = gguf_type.lower()
    return t if t in _PROBE_TYPES else "q8_0"


def _target_ref(target: str | Callable[[dict[str, Any]], Any]) -> str:
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"a probe target must be an importable module-level function, not {target!r}")
    return f"{module}:{qualname}"


def probe(gguf_type: str, *, store_dir: str | Path, n_threads: int | None = None,
          timeout: float = DEFAULT_TIMEOUT, use_cache: bool = True,
          target: str | Callable[[dict[str, Any]], Any] | None = None) -> ProbeResult:
    """Run llama.cpp on a tiny ``gguf_type`` model in a child process and say how it went.

    Never raises for what happens in the child: a signal, a hang past ``timeout`` seconds (the child
    is killed) or an exception there each come back as a :class:`ProbeResult`. A passed probe is
    cached under ``store_dir`` (see the module docstring) and returned with ``cached=True`` next time.
    ``target`` (``"module:function"`` or an importable function taking the job dict) replaces the
    real child work; it is for tests, and a probe with a target is never cached.
    """
    gguf_type = probe_type(gguf_type)
    store = Path(store_dir).expanduser()
    flags = cpu_flags()
    cache_path = store / CACHE_FILE
    key = _cache_key(gguf_type, flags)
    cacheable = use_cache and target is None
    if cacheable and key in _read_cache(cache_path):
        return ProbeResult(OK, gguf_type, cached=True, stage="done")

    ref = _target_ref(target) if target is not None else f"{__name__}:_run_probe_model"
    with tempfile.TemporaryDirectory(prefix="autoglm-llama-probe-") as tmp:
        result_path, stage_path, err_path = Path(tmp, "result.json"), Path(tmp, "stage"), Path(tmp, "stderr")
        job = {"target": ref, "gguf_type": gguf_type, "store_dir": str(store), "n_threads": n_threads,
               "result": str(result_path), "stage": str(stage_path), "sys_path": [p for p in sys.path if p]}
        code = f"from {__name__} import _child_main; _child_main()"
        t0 = time.monotonic()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(job)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=_child_env())
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                timed_out = True
        seconds = time.monotonic() - t0
        stage = _read_text(stage_path) or None
        tail = _tail(_read_text(err_path))
        reply: dict[str, Any] = {}
        if result_path.is_file():
            try:
                reply = json.loads(result_path.read_text(encoding="utf-8"))
            except ValueError:
                reply = {}
    if timed_out:
        result = ProbeResult(TIMEOUT, gguf_type, seconds, stage=stage, stderr_tail=tail)
    elif rc < 0:
        result = ProbeResult(CRASHED, gguf_type, seconds, signal=_signal_name(-rc), stage=stage, stderr_tail=tail)
    elif rc == 0 and reply.get("ok"):
        result = ProbeResult(OK, gguf_type, seconds, stage="done", details=reply.get("details") or {})
    else:
        error = reply.get("error") or _last_line(tail) or f"the probe process exited with code {rc}"
        result = ProbeResult(ERROR, gguf_type, seconds, stage=stage, error=error, stderr_tail=tail)
    if result.ok and cacheable:
        _remember(cache_path, key, result)
    return result


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(_ENV, None)  # the child never probes again
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints where it was (to the captured stderr)
    return env


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


# --------------------------------------------------------------------------------------------------
# the child


def _child_main() -> None:
    """Entry point of the probe's child process: ``python -c ... '<job json>'``."""
    job = json.loads(sys.argv[1])
    for p in reversed(job.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    stage_path = Path(job["stage"])

    def stage(name: str) -> None:
        stage_path.write_text(name, encoding="utf-8")

    job["set_stage"] = stage
    import importlib

    try:
        module_name, _, qualname = job["target"].partition(":")
        fn: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        details = fn(job) or {}
        reply: dict[str, Any] = {"ok": True, "details": details}
    except BaseException as exc:  # noqa: BLE001 - the parent gets every failure as one line
        reply = {"ok": False, "error": f"{type(exc).__name__}: {_one_line(str(exc))}"}
    Path(job["result"]).write_text(json.dumps(reply), encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if reply["ok"] else 1)  # skip interpreter teardown: llama.cpp's threads are not ours to join


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _run_probe_model(job: dict[str, Any]) -> dict[str, Any]:
    """The real child work: the demo model as ``job["gguf_type"]``, loaded by the server's runner, a
    batched prefill of several sequences and a few decode steps; raises when logits are not finite."""
    import torch

    from autoglm.engine.backends.llamacpp import LlamaCppRunner
    from autoglm.hub.demo import ensure_demo_model
    from autoglm.quantization.gguf import convert_dir, gguf_cache_path

    stage = job["set_stage"]
    gguf_type, store = job["gguf_type"], Path(job["store_dir"])
    stage("prepare")
    model_dir = ensure_demo_model(PROBE_MODEL, store)
    # the same place ensure_gguf("autoglm-demo") caches it, so either one's conversion serves the other
    out_dir = gguf_cache_path(store, PROBE_MODEL, gguf_type).parent
    path = convert_dir(model_dir, gguf_type, out_dir, progress=False).path
    stage("load")
    runner = LlamaCppRunner(path, max_model_len=64, max_num_seqs=_SEQS, n_threads=job.get("n_threads"),
                            n_batch=256, kv_f32=gguf_type == "f32", min_reuse=10**9)
    try:
        stage("prefill")
        prompts = [[(7 * i + 3 * j + 11) % 200 + 20 for j in range(n)] for i, n in enumerate(_PROMPT_LENS)]
        logits = runner.prefill(list(range(_SEQS)), prompts)
        _check_logits(logits, "prefill")
        stage("decode")
        for _ in range(_DECODE_STEPS):
            logits = runner.decode([int(t) for t in torch.argmax(logits, dim=-1)])
            _check_logits(logits, "decode")
        stage("done")
        return {"path": str(path), "sequences": _SEQS, "prompt_tokens": sum(_PROMPT_LENS),
                "decode_steps": _DECODE_STEPS, "n_vocab": runner.n_vocab}
    finally:
        runner.close()


def _check_logits(logits: Any, step: str) -> None:
    import torch

    if logits.shape[0] != _SEQS or not bool(torch.isfinite(logits).all()):
        raise AutoGLMError(f"llama.cpp returned {'non-finite' if logits.shape[0] == _SEQS else 'misshapen'} "
                           f"logits after {step} ({tuple(logits.shape)})")


# --------------------------------------------------------------------------------------------------
# the check a loader calls


def rebuild_hint() -> str:
    """How to reinstall the llamacpp extra without host-specific (AMX) instructions, as a command."""
    version = _llama_cpp_identity()[0]
    pin = f"llama-cpp-python=={version}" if version != "?" else "llama-cpp-python"
    return f'CMAKE_ARGS="{_REBUILD_ARGS}" pip install --force-reinstall --no-cache-dir {pin}'


def _mode() -> str:
    value = os.environ.get(_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "true", "yes", "on"):
        return "on"
    if value in ("0", "false", "no", "off"):
        return "off"
    raise ConfigError(f"{_ENV}={value!r}: use 1 (always probe llama.cpp before serving), 0 (never) or auto "
                      "(when the CPU reports AMX)")


def _timeout() -> float:
    value = os.environ.get(_ENV_TIMEOUT, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"{_ENV_TIMEOUT}={value!r}: give the probe's time limit in seconds, e.g. 300")
    return seconds


def check_llamacpp_cpu(gguf_type: str, settings: Any, *, timeout: float | None = None,
                       target: str | Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Return when llama.cpp can serve ``gguf_type`` on this CPU, else raise one clear error.

    Probes (see :func:`probe`) when the CPU reports AMX or ``AUTOGLM_LLAMA_PROBE=1``; does nothing with
    ``AUTOGLM_LLAMA_PROBE=0`` or on a CPU without AMX. ``settings`` needs ``store_dir`` and
    ``num_threads`` (an :class:`~autoglm.config.EngineSettings`). A crash is an
    :class:`~autoglm.errors.UnsupportedError` naming the signal and type and saying how to rebuild the
    extra or which engine to serve with instead; a timeout or an error in the probe is an
    :class:`~autoglm.errors.AutoGLMError` saying so. ``target`` is for tests (see :func:`probe`).
    """
    mode = _mode()
    flags = cpu_flags()
    amx = has_amx(flags)
    if mode == "off" or (mode == "auto" and not amx):
        return
    limit = _timeout() if timeout is None else timeout
    why = "the CPU reports AMX" if amx else f"{_ENV}=1"
    log.info("llamacpp: probing llama.cpp with a %s batch in a child process (%s) ...", probe_type(gguf_type), why)
    result = probe(gguf_type, store_dir=settings.store_dir, n_threads=getattr(settings, "num_threads", None),
                   timeout=limit, target=target)
    if result.ok:
        log.info("llamacpp: %s", result.describe())
        return
    if result.stderr_tail:
        log.debug("llamacpp probe stderr:\n%s", result.stderr_tail)
    skip = f"{_ENV}=0 skips this check"
    if result.outcome == CRASHED:
        amx_names = ", ".join(sorted(f for f in flags if f.startswith("amx")))
        cpu = f" (this CPU reports {amx_names})" if amx_names else ""
        raise UnsupportedError(
            f"{result.describe()}: the installed llama-cpp-python cannot run on this CPU{cpu}, and serving "
            f"would die the same way on the first request. Rebuild it without host-specific instructions: "
            f"{rebuild_hint()} -- or serve with --engine transformers ({skip})"
        )
    if result.outcome == TIMEOUT:
        raise AutoGLMError(f"{result.describe()}; the llama.cpp build may hang on this CPU: raise "
                           f"{_ENV_TIMEOUT} (seconds) on a slow machine, rebuild it with {rebuild_hint()}, or serve "
                           f"with --engine transformers ({skip})")
    raise AutoGLMError(f"{result.describe()} -- serve with --engine transformers, or {skip}")
