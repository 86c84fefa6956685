"""benchmarks/engine_step.py: the split of a step into forward and the rest, and its CLI errors."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_step.py"
_spec = importlib.util.spec_from_file_location("engine_step_bench", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


class _Core:
    """A core whose steps take 3 ms of a fake clock, 2 of them in the 'forward' (what the wrapper
    accumulates)."""

    def __init__(self, forward: list[float], clock: list[float]):
        self.forward, self.clock, self.added, self.left = forward, clock, [], 0

    def add_request(self, request):
        self.added.append(request)
        self.left = request.params.max_tokens

    def has_work(self):
        return self.left > 0

    def step(self, emit):
        self.clock[0] += 0.002
        self.forward[0] += 0.002
        self.clock[0] += 0.001
        self.left -= 1


def test_the_rest_is_the_step_minus_the_forward(monkeypatch):
    forward, clock = [0.0], [0.0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    core = _Core(forward, clock)
    row = bench.measure(core, 2, 20, forward)
    assert len(core.added) == 2 and all(r.params.temperature == 0.0 and r.params.ignore_eos for r in core.added)
    assert not core.has_work()  # the requests were run to the end
    assert abs(row["step_ms"] - 3.0) < 1e-6 and abs(row["forward_ms"] - 2.0) < 1e-6
    assert abs(row["rest_ms"] - 1.0) < 1e-6 and abs(row["rest_share"] - 1 / 3) < 1e-6


def test_a_bad_batch_list_is_one_line_and_a_nonzero_exit():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--batch", "1,x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--batch '1,x' is not a comma-separated list of integers" in proc.stderr
