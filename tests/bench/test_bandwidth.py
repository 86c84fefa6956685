"""benchmarks/bandwidth.py's report: the bound per precision and, when profiled, the kernel's ceiling."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bandwidth.py"
_spec = importlib.util.spec_from_file_location("bandwidth_bench", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bandwidth_bench"] = bench
_spec.loader.exec_module(bench)

BW = {"bytes_s": 40e9, "torch_bytes_s": 40e9, "numpy_1thread_bytes_s": 20e9, "torch_threads": 2, "buffer_mib": 1024}


def test_the_ceiling_is_the_weight_matmuls_alone_against_the_bound():
    row = {"precision": "int8", "threads": 1, "bytes_per_token": 0.8e9, "bound_tok_s": 50.0, "decode_tok_s": 25.0,
           "fraction": 0.5, "inprocess_ms": 36.0, "linear_ms": 32.0}
    table = bench.markdown(BW, [row])
    line = next(x for x in table.splitlines() if x.startswith("| int8 | 1 |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # served 40 ms, in-process 36, matmuls 32 ms: 0.8 GB in 32 ms = 25 GB/s; ceiling 31.25 tok/s = 62 % of 50
    assert cells == ["int8", "1", "40.0", "36.0", "32.0", "25.0", "31.2", "62 %"]


def test_without_a_profile_there_is_no_ceiling_and_a_failed_run_prints_no_division():
    row = {"precision": "fp32", "threads": "default", "bytes_per_token": 3e9, "bound_tok_s": 13.3,
           "decode_tok_s": 0.0, "fraction": 0.0}
    table = bench.markdown(BW, [row])
    assert "kernel ceiling" not in table and "| 0.0 | 0 % |" in table
    table = bench.markdown(BW, [{**row, "inprocess_ms": 300.0, "linear_ms": 250.0}])
    assert "| fp32 | default | - | 300.0 | 250.0 |" in table
