"""Device detection on this machine (a real /proc/meminfo, a real torch)."""
from __future__ import annotations

import sys

import pytest

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.quantization import detect_device
from autoglm.quantization import device as device_mod


def test_cpu_memory_is_sane():
    info = detect_device("cpu")
    assert info.kind == "cpu" and info.torch_device == "cpu"
    assert 0 < info.free_bytes <= info.total_bytes
    if sys.platform.startswith("linux"):
        total, _ = device_mod._proc_meminfo()
        assert info.total_bytes <= total  # a cgroup limit may only lower it


def test_proc_meminfo_parsing(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\nMemAvailable:    8192000 kB\n")
    assert device_mod._proc_meminfo(str(f)) == (16384000 * 1024, 8192000 * 1024)
    assert device_mod._proc_meminfo(str(tmp_path / "missing")) == (None, None)


def test_auto_picks_what_torch_sees():
    import torch

    info = detect_device("auto")
    if torch.cuda.is_available():
        assert info.kind == "cuda" and info.free_bytes > 0
    elif torch.backends.mps.is_available():
        assert info.kind == "mps"
    else:
        assert info.kind == "cpu"


def test_missing_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UnsupportedError, match="--device cpu"):
        detect_device("cuda")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:1", "gpu"])
def test_unknown_device(bad):
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        detect_device(bad)
