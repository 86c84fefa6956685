"""`autoglm-risk demo`, the one command: data -> features -> search -> service -> live stream with reasons ->
reviews -> the loop retrains -> backtest table. Run at CI size as a real process (conftest.demo_run)."""
from __future__ import annotations


def test_the_demo_runs_every_step_and_the_loop_retrains(demo_run):
    wd, summary, out = demo_run
    for step in ("== 1. data", "== 2. features", "== 3. the decision service", "== 4. replaying",
                 "== 5. reviewing", "== 6. the loop", "== 7. backtest", "== done"):
        assert step in out, step
    assert "because: " in out  # decisions stream with their reasons
    assert sum(summary["decisions"].values()) == summary["stream"] == 160
    assert summary["stream_fraud"] > 0 and summary["caught"] > 0
    assert summary["resolved"] >= 0  # the queue may be empty at this size; the chargeback feed labels the rest
    # the loop turned: its trigger fired on the review feedback and it trained, gated and decided
    assert summary["retrain"]["status"] in ("promoted", "refused"), summary["retrain"]
    assert summary["retrain"]["candidate"] is not None
    assert "| rules only |" in out and "| model only |" in out and "| rules + model |" in out
    assert summary["metrics_lines"] > 10
    assert (wd / "risk.yaml").read_text().count("search:") == 1
