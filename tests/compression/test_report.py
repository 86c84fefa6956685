"""Size, speed and table of the before/after report."""
from __future__ import annotations

import copy

from autoglm.compression.report import ModelStats, decode_speed, format_table, model_size
from autoglm.quantization import apply_precision, detect_device


def test_model_size_counts_int8_linears(teacher):
    params, mem = model_size(teacher)
    assert params == sum(p.numel() for p in teacher.parameters()) and mem == 4 * params
    q = apply_precision(copy.deepcopy(teacher), "int8", detect_device("cpu"))
    q_params, q_mem = model_size(q)
    assert q_params == params  # same weights, fewer bytes
    assert q_mem < 0.6 * mem


def test_decode_speed_is_positive(teacher):
    assert decode_speed(teacher, batch_size=2, new_tokens=3, repeats=1) > 0


def test_table_has_rows_and_change_column():
    a = ModelStats("before", 1000, 4000, 4000, {1: 10.0, 8: 40.0})
    b = ModelStats("after", 500, 2000, None, {1: 20.0, 8: 80.0})
    lines = format_table([a, b]).splitlines()
    assert lines[0].split() == ["model", "params", "memory", "on", "disk", "tok/s", "b=1", "tok/s", "b=8"]
    assert lines[2].split()[:4] == ["before", "1,000", "3.9", "KB"]
    assert lines[3].split() == ["after", "500", "2.0", "KB", "-", "20.0", "80.0"]
    assert lines[4].split() == ["change", "x0.50", "x0.50", "-", "x2.00", "x2.00"]
