"""The llama.cpp CPU probe: a child that dies by a signal, hangs or raises is reported (and turned into
one clear error by ``check_llamacpp_cpu``); the real probe passes on this machine and is cached.

The crash, hang and error children are injected targets below (real child processes, real signals);
the real-probe test needs the ``llamacpp`` extra and is skipped without it.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from autoglm.config import EngineSettings
from autoglm.engine.backends import llamacpp_probe as lp
from autoglm.errors import AutoGLMError, ConfigError, UnsupportedError

HERE = __name__


# -- child targets (run in the probe's child process) ------------------------------------------------

def die_by_signal(job):
    job["set_stage"]("prefill")
    os.kill(os.getpid(), getattr(signal, os.environ.get("PROBE_TEST_SIGNAL", "SIGILL")))
    time.sleep(30)  # pragma: no cover - never reached


def hang(job):
    job["set_stage"]("decode")
    time.sleep(60)


def fail(job):
    job["set_stage"]("load")
    raise ValueError("boom\nsecond line")


def succeed(job):
    return {"type": job["gguf_type"]}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("AUTOGLM_LLAMA_PROBE", raising=False)
    monkeypatch.delenv("AUTOGLM_LLAMA_PROBE_TIMEOUT", raising=False)


def _settings(tmp_path):
    return EngineSettings(store_dir=tmp_path, num_threads=1)


# -- CPU flags ------------------------------------------------------------------------------------

def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu AVX2 amx_tile amx_int8\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    flags = lp.cpu_flags(info)
    assert flags == {"fpu", "avx2", "amx_tile", "amx_int8"}
    assert lp.has_amx(flags)
    assert not lp.has_amx({"fpu", "avx512f"})
    assert lp.cpu_flags(tmp_path / "missing") == set()


def test_cpu_flags_of_this_machine_match_proc():
    flags = lp.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags, "a Linux machine reports some CPU flags"
    assert lp.has_amx() == any(f.startswith("amx") for f in flags)


# -- outcomes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SIGILL", "SIGSEGV", "SIGBUS"])
def test_a_child_killed_by_a_signal_is_named(tmp_path, monkeypatch, name):
    monkeypatch.setenv("PROBE_TEST_SIGNAL", name)
    r = lp.probe("q8_0", store_dir=tmp_path, n_threads=1, timeout=60, target=die_by_signal)
    assert (r.outcome, r.signal, r.stage) == ("crashed", name, "prefill")
    assert not r.ok
    assert name in r.describe() and "prefill" in r.describe() and "q8_0" in r.describe()
    assert "die_by_signal" in r.stderr_tail  # the child's faulthandler says where it died
    assert not (tmp_path / lp.CACHE_FILE).exists()  # failures are never cached


def test_a_hanging_child_times_out_quickly(tmp_path):
    t0 = time.monotonic()
    r = lp.probe("q8_0", store_dir=tmp_path, timeout=1.5, target=hang)
    assert time.monotonic() - t0 < 20
    assert (r.outcome, r.stage) == ("timeout", "decode")
    assert 1.5 <= r.seconds < 20


def test_an_error_in_the_child_comes_back_as_one_line(tmp_path):
    r = lp.probe("q8_0", store_dir=tmp_path, timeout=60, target=f"{HERE}:fail")
    assert r.outcome == "error"
    assert r.error == "ValueError: boom second line"
    assert r.stage == "load"


def test_a_passing_target_is_ok_but_not_cached(tmp_path):
    r = lp.probe("Q4_K_M", store_dir=tmp_path, timeout=60, target=succeed)
    assert r.ok and not r.cached and r.details == {"type": "q4_k_m"}
    assert not (tmp_path / lp.CACHE_FILE).exists()


def test_a_target_must_be_importable(tmp_path):
    with pytest.raises(ValueError, match="importable"):
        lp.probe("q8_0", store_dir=tmp_path, target=lambda job: None)


def test_other_quantized_types_probe_as_q8_0():
    assert [lp.probe_type(t) for t in ("f32", "F16", "q8_0", "q4_k_m", "q6_k", "file")] == \
        ["f32", "f16", "q8_0", "q4_k_m", "q8_0", "q8_0"]


# -- check_llamacpp_cpu -----------------------------------------------------------------------------

def test_a_crash_becomes_one_clear_unsupported_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE", "1")
    with pytest.raises(UnsupportedError) as info:
        lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=60, target=die_by_signal)
    msg = str(info.value)
    assert "\n" not in msg
    assert "SIGILL" in msg and "illegal instruction" in msg.lower() and "q8_0" in msg
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"' in msg
    assert "pip install --force-reinstall --no-cache-dir llama-cpp-python" in msg
    assert "--engine transformers" in msg and "AUTOGLM_LLAMA_PROBE=0" in msg


def test_an_amx_cpu_is_probed_without_being_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(lp, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2", "amx_tile", "amx_int8"})
    with pytest.raises(UnsupportedError, match=r"this CPU reports amx_int8, amx_tile"):
        lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=60, target=die_by_signal)
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE", "0")  # skipped: the crashing child never runs
    assert lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=60, target=die_by_signal) is None


def test_without_amx_nothing_is_probed(tmp_path, monkeypatch):
    monkeypatch.setattr(lp, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2"})
    assert lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=60, target=die_by_signal) is None


def test_a_timeout_and_an_error_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE", "1")
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE_TIMEOUT", "1")
    timed_out = r"did not finish a q8_0 probe in 1 s during decode.*AUTOGLM_LLAMA_PROBE_TIMEOUT"
    with pytest.raises(AutoGLMError, match=timed_out):
        lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), target=hang)
    with pytest.raises(AutoGLMError, match=r"failed during load: ValueError: boom second line") as info:
        lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=60, target=fail)
    assert not isinstance(info.value, UnsupportedError)


@pytest.mark.parametrize("var,value", [("AUTOGLM_LLAMA_PROBE", "maybe"), ("AUTOGLM_LLAMA_PROBE_TIMEOUT", "soon")])
def test_bad_settings_are_config_errors(tmp_path, monkeypatch, var, value):
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE", "1")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), target=succeed)


# -- the cache key ----------------------------------------------------------------------------------

def test_the_cache_key_changes_with_library_type_and_cpu(monkeypatch):
    monkeypatch.setattr(lp, "_llama_cpp_identity", lambda: ("0.3.36", {"libggml-cpu.so": 1}))
    base = lp._cache_key("q8_0", {"avx2"})
    assert base == lp._cache_key("q8_0", {"avx2"})
    assert base != lp._cache_key("f16", {"avx2"})
    assert base != lp._cache_key("q8_0", {"avx2", "amx_tile"})
    monkeypatch.setattr(lp, "_llama_cpp_identity", lambda: ("0.3.36", {"libggml-cpu.so": 2}))  # rebuilt
    assert base != lp._cache_key("q8_0", {"avx2"})
    monkeypatch.setattr(lp, "_llama_cpp_identity", lambda: ("0.3.37", {"libggml-cpu.so": 1}))
    assert base != lp._cache_key("q8_0", {"avx2"})


# -- the real probe ---------------------------------------------------------------------------------

def test_the_real_probe_passes_here_and_is_cached(tmp_path, monkeypatch, demo_dir):
    pytest.importorskip("gguf", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / lp.PROBE_MODEL).symlink_to(demo_dir)  # the session's demo model: no rebuild
    monkeypatch.setenv("AUTOGLM_LLAMA_PROBE", "1")  # this machine has no AMX: force the probe

    t0 = time.monotonic()
    assert lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=240) is None
    first = time.monotonic() - t0
    passed = json.loads((tmp_path / lp.CACHE_FILE).read_text())["passed"]
    assert [v["gguf_type"] for v in passed.values()] == ["q8_0"]
    assert (tmp_path / "gguf" / lp.PROBE_MODEL / "q8_0.gguf").is_file()

    t0 = time.monotonic()
    assert lp.check_llamacpp_cpu("q8_0", _settings(tmp_path), timeout=240) is None
    assert time.monotonic() - t0 < min(first, 1.0)  # no child this time
    r = lp.probe("q8_0", store_dir=tmp_path, n_threads=1)
    assert r.ok and r.cached
    # without the cache the child really runs the batch: four sequences prefilled, three decode steps
    r = lp.probe("q8_0", store_dir=tmp_path, n_threads=1, timeout=240, use_cache=False)
    assert r.ok and not r.cached and r.details["sequences"] == 4 and r.details["decode_steps"] == 3


def test_the_loader_refuses_before_converting_when_the_probe_crashes(tmp_path, monkeypatch):
    """load_llamacpp_model asks the probe first: on an AMX CPU whose probe dies, the server never converts
    or loads the model and the user reads the one-line fix instead of a silent SIGILL later."""
    pytest.importorskip("llama_cpp")
    from autoglm.engine.backends import llamacpp

    monkeypatch.setattr(lp, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2", "amx_tile", "amx_int8"})
    real = lp.probe
    monkeypatch.setattr(lp, "probe", lambda t, **kw: real(t, **{**kw, "target": die_by_signal}))
    converted = []
    monkeypatch.setattr("autoglm.quantization.gguf.ensure_gguf", lambda *a, **k: converted.append(a))
    settings = EngineSettings(model="autoglm-demo", engine="llamacpp", quantize="int8", store_dir=tmp_path,
                              device="cpu")
    with pytest.raises(UnsupportedError, match="SIGILL.*q8_0"):
        llamacpp.load_llamacpp_model(settings)
    assert converted == []
