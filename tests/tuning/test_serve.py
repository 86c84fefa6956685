"""`autoglm tune serve`: the space against the planner, the deploy file, and real tuning runs.

The real runs start `python -m autoglm serve` on the tiny demo model for every measured trial and
drive it with the bench client; the workload is tiny (4 requests, 16 tokens) to keep them short.
"""
from __future__ import annotations

import argparse
import json

import pytest

from autoglm.deploy.loader import load_deploy_file
from autoglm.errors import ConfigError
from autoglm.hub.demo import demo_config
from autoglm.quantization.device import DeviceInfo
from autoglm.quantization.planner import ModelArch, estimate_row
from autoglm.tuning import serve as tserve
from autoglm.tuning.serve_report import deploy_yaml
from autoglm.tuning.serve_space import (
    Objective,
    Workload,
    build_space,
    planner_reason,
    read_request_log,
    serve_flags,
)

TINY = Workload(input_len=32, output_tokens=16, concurrency=2, num_prompts=4)
GiB = 1024**3


def _arch() -> ModelArch:
    return ModelArch.from_config(demo_config("autoglm-demo").to_dict(), name="autoglm-demo")


def _device_fitting_4_not_32(arch: ModelArch, length: int = 4096, prefix: int = 8192) -> DeviceInfo:
    """A CPU whose budget holds the demo at max_num_seqs 4 but no precision at 32 (from the planner's own rows)."""
    cpu = DeviceInfo(kind="cpu", name="test cpu", total_bytes=64 * GiB, free_bytes=64 * GiB)

    def need(p: str, seqs: int) -> int:
        r = estimate_row(arch, p, cpu, length, seqs, extra_kv_tokens=prefix)
        return max(r.total_bytes, r.peak_bytes)

    lo, hi = need("int8", 4), min(need(p, 32) for p in ("int8", "fp32", "bf16"))
    assert lo < hi
    free = int((lo + hi) / 2 / 0.9)
    return DeviceInfo(kind="cpu", name="test cpu", total_bytes=free, free_bytes=free)


def test_planner_prunes_an_over_budget_setting():
    arch = _arch()
    dev = _device_fitting_4_not_32(arch)
    space = build_space(arch=arch, device_kind="cpu", engines=["transformers"], default_engine="transformers",
                        need_tokens=120)
    base = dict(space.defaults)
    assert planner_reason({**base, "max_num_seqs": 4}, arch=arch, device=dev, need_tokens=120) is None
    why = planner_reason({**base, "max_num_seqs": 32}, arch=arch, device=dev, need_tokens=120)
    assert why and "max_num_seqs 32 ->" in why
    short = planner_reason({**base, "max_model_len": 64}, arch=arch, device=dev, need_tokens=120)
    assert short and "120 tokens" in short


def test_space_holds_the_defaults_and_the_workload_need():
    arch = _arch()
    space = build_space(arch=arch, device_kind="cpu", engines=["transformers"], default_engine="transformers",
                        need_tokens=300, overrides={"max_num_seqs": ["8", "32"]})
    assert space.max_num_seqs == (16, 8, 32)  # the server's default 16 added back: it is always measured
    assert all(n >= 300 for n in space.max_model_len) and 4096 in space.max_model_len
    assert serve_flags(space.defaults, space.defaults) == []  # trial 0 is `autoglm serve --model M`, no flags
    assert serve_flags({**space.defaults, "max_num_seqs": 8}, space.defaults) == ["--max-num-seqs", "8"]
    with pytest.raises(ConfigError, match="limit of 4096"):
        build_space(arch=arch, device_kind="cpu", engines=["transformers"], default_engine="transformers",
                    need_tokens=300, overrides={"max_model_len": [8192]})


def test_objective_bounds_and_request_log(tmp_path):
    m = {"tok_s": 100.0, "req_s": 2.0, "ttft_p99": 900.0, "tpot_p99": 30.0, "e2e_p99": 2000.0, "failed": 0}
    assert Objective("ttft_p99", slo_ms=1000).feasible(m)
    assert not Objective("ttft_p99", slo_ms=800).feasible(m)
    assert not Objective("throughput").feasible({**m, "failed": 1})  # dropped requests never win
    with pytest.raises(ConfigError, match="--slo-ms"):
        Objective("rps_under_slo").validate()
    log = tmp_path / "reqs.jsonl"
    log.write_text('{"prompt": "hello there", "max_tokens": 8}\n'
                   '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}\n')
    assert [(r.prompt, r.max_tokens) for r in read_request_log(log)] == [("hello there", 8), ("hi", 4)]
    log.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"reqs.jsonl:2"):
        read_request_log(log)


def test_deploy_file_loads(tmp_path):
    params = {"engine": "transformers", "quantize": "none", "max_num_seqs": 8, "prefill_chunk": 256,
              "prefix_cache_tokens": 0, "max_model_len": 1024}
    path = tmp_path / "deploy.yaml"
    path.write_text(deploy_yaml("autoglm-demo", params, device="cpu", header=["a comment"]))
    model = load_deploy_file(path).models[0]
    assert (model.name, model.quantize, model.max_num_seqs, model.prefill_chunk, model.prefix_cache_tokens,
            model.max_model_len, model.device) == ("autoglm-demo", "none", 8, 256, 0, 1024, "cpu")
    local = tmp_path / "my-glm"
    local.mkdir()
    path.write_text(deploy_yaml(str(local), params))
    model = load_deploy_file(path).models[0]
    assert model.name == "my-glm" and model.source == str(local.resolve())


def test_cli_rejects_bad_input_before_any_server():
    from autoglm.cli.tune_serve import add_arguments, run

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ConfigError, match="rps_under_slo needs a bound"):
        run(p.parse_args(["autoglm-demo", "--objective", "rps_under_slo"]))
    with pytest.raises(ConfigError, match="names nothing"):
        run(p.parse_args(["autoglm-demo", "--max-num-seqs", ","]))


@pytest.fixture
def home(autoglm_home, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    return autoglm_home


def test_real_run_measures_defaults_and_a_setting_and_picks_the_better(home, tmp_path, monkeypatch):
    started: list[list[str]] = []
    real = tserve.measure_setting

    def counting(model, flags, *a, **kw):  # the real measurement, counted
        started.append(list(flags))
        return real(model, flags, *a, **kw)

    monkeypatch.setattr(tserve, "measure_setting", counting)
    dev = _device_fitting_4_not_32(_arch())
    out = tmp_path / "t" / "deploy.yaml"
    result = tserve.tune_serving(
        "autoglm-demo", workload=TINY, n_trials=3, sampler="grid", device_info=dev, out=out, progress=None,
        confirm_rounds=1, space={"engine": ["transformers"], "max_num_seqs": [4, 32], "quantize": ["auto"], "prefill_chunk": [512],
               "prefix_cache_tokens": [8192], "max_model_len": [4096]})

    by_seqs = {t.params["max_num_seqs"]: t for t in result.trials if t.role != "confirm"}
    assert by_seqs[32].status == "pruned" and "planner" in by_seqs[32].reason and not by_seqs[32].metrics
    assert ["--max-num-seqs", "32"] not in started  # pruned before any server started
    assert started[0] == [] and result.trials[0].role == "defaults"  # trial 0: the server's own defaults
    measured = [t for t in result.trials if t.metrics]
    assert len(measured) == 4 == len(started)  # defaults, 4 seqs, then both again
    assert all(t.metrics["completed"] == 4 and t.metrics["tok_s"] > 0 for t in measured)
    assert result.trials[-1].role == "confirm" and result.trials[-1].flags == []  # defaults re-measured last

    def mean(seqs: int) -> float:  # the choice is made from the side-by-side re-measurements
        vals = [t.metrics["tok_s"] for t in measured if t.params["max_num_seqs"] == seqs and t.role == "confirm"]
        assert len(vals) == 1
        return sum(vals)

    winner = 4 if mean(4) > mean(16) else 16
    assert result.choice["max_num_seqs"] == winner
    assert result.chosen_is_default == (winner == 16)
    model = load_deploy_file(out).models[0]
    assert model.max_num_seqs == winner and model.quantize == "auto"
    report = (out.parent / "report.md").read_text()
    assert "(defaults)" in report and "pruned" in report and "Choice:" in report
    assert json.loads((out.parent / "trials.json").read_text())["choice"]["max_num_seqs"] == winner


def test_a_server_that_fails_to_start_is_a_failed_trial(home, tmp_path):
    # vLLM on a CPU-only machine: the planner has no objection, the server exits at start
    journal = tmp_path / "study.journal"
    result = tserve.tune_serving("autoglm-demo", workload=TINY, n_trials=2, engines=["vllm"], sampler="grid",
                                 space={"quantize": ["auto"], "max_num_seqs": [16], "prefill_chunk": [512],
                                        "prefix_cache_tokens": [8192], "max_model_len": [4096]},
                                 confirm=False, storage=str(journal), progress=None)
    failed = [t for t in result.trials if t.params["engine"] == "vllm"]
    assert len(failed) == 1 and failed[0].status == "failed" and "did not start" in failed[0].reason
    assert result.choice is not None and result.chosen_is_default  # the defaults ran, and stay the choice
    # the journal keeps the study: a second call resumes it and starts nothing new (the budget is spent)
    again = tserve.tune_serving("autoglm-demo", workload=TINY, n_trials=2, engines=["vllm"], sampler="grid",
                                space={"quantize": ["auto"], "max_num_seqs": [16], "prefill_chunk": [512],
                                       "prefix_cache_tokens": [8192], "max_model_len": [4096]},
                                confirm=False, storage=str(journal), progress=None)
    assert [t.number for t in again.trials] == [t.number for t in result.trials]
