"""The ``monitoring:`` section, turning the monitor off, and what it adds to /metrics (in-process, no engine)."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from autoglm.config import ServerSettings
from autoglm.deploy.loader import parse_deploy_text
from autoglm.deploy.runner import server_settings
from autoglm.errors import ConfigError
from autoglm.monitoring.quality import Quality
from autoglm.monitoring.served import MONITOR_METRICS, ModelSnapshot, ServedMonitor, install_monitoring
from autoglm.monitoring.settings import MonitorSettings

BASE = "models:\n  - name: autoglm-demo\n"


def test_monitoring_is_on_by_default_and_the_section_sets_it():
    assert server_settings(parse_deploy_text(BASE)).monitoring == MonitorSettings()
    cfg = parse_deploy_text(BASE + "monitoring:\n  window: 60\n  flush_interval: 5\n  psi_threshold: 0.2\n")
    s = server_settings(cfg).monitoring
    assert (s.enabled, s.window, s.flush_interval, s.psi_threshold) == (True, 60, 5.0, 0.2)
    assert s.thresholds.psi_threshold == 0.2 and s.thresholds.min_count == s.min_requests
    off = server_settings(parse_deploy_text(BASE + "monitoring:\n  enabled: false\n")).monitoring
    assert off.enabled is False


@pytest.mark.parametrize("section,needle", [
    ("monitoring:\n  windw: 60\n", "windw"),
    ("monitoring:\n  window: 10\n  flush_interval: 10\n", "flush_interval"),
    ("monitoring:\n  window: 0\n", "window"),
    ("monitoring:\n  alpha: 2\n", "alpha"),
])
def test_a_bad_monitoring_section_is_a_file_line_error(section, needle):
    with pytest.raises(ConfigError) as err:
        parse_deploy_text(BASE + section, "d.yaml")
    assert "d.yaml:" in str(err.value) and needle in str(err.value)


class _Registry:
    def __init__(self):
        self.collectors = []

    def register(self, collector):
        self.collectors.append(collector)


class _Metrics:
    def __init__(self):
        self.registry = _Registry()


class _Owner:
    gateway = None
    on_response = None


def test_turned_off_it_adds_nothing():
    app, metrics, owner = FastAPI(), _Metrics(), _Owner()
    server = ServerSettings(monitoring=MonitorSettings(enabled=False))
    assert install_monitoring(app, owner, server, None, metrics) is None
    assert metrics.registry.collectors == [] and owner.on_response is None
    assert not any(getattr(r, "path", "") == "/v1/monitor/labels" for r in app.routes)


def test_in_the_app_every_served_response_counts_streams_and_cache_hits_too(tmp_path):
    from autoglm.api.app import build_app
    from autoglm.gateway import Gateway, GatewaySettings
    from tests.api.fake_engine import FakeEngine

    engine = FakeEngine(reply="Hello there.")
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), cache_backend="memory",
                                                    usage_spool_dir=str(tmp_path / "spool")))
    server = ServerSettings(monitoring=MonitorSettings(window=60, flush_interval=5))
    app = build_app({engine.model_name: engine}, server, gateway=gateway)
    monitor = app.state.monitor
    chat = {"model": engine.model_name, "messages": [{"role": "user", "content": "Hi, how are you?"}],
            "max_tokens": 8, "temperature": 0}
    with TestClient(app) as c:
        first, second = c.post("/v1/chat/completions", json=chat), c.post("/v1/chat/completions", json=chat)
        assert first.headers["x-autoglm-cache"] == "miss" and second.headers["x-autoglm-cache"] == "hit"
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True, "temperature": 0.5}) as r:
            assert r.status_code == 200 and "[DONE]" in "".join(r.iter_text())
        assert c.post("/v1/completions", json={"model": engine.model_name, "prompt": "Once", "max_tokens": 4,
                                               "temperature": 0.5}).status_code == 200
        assert c.post("/tokenize", json={"model": engine.model_name, "prompt": "x"}).status_code == 200
        assert c.post("/v1/chat/completions", json={**chat, "max_tokens": -1}).status_code == 400
        monitor.tick(force=True)
        assert monitor.observed == 4  # miss, hit, stream, completion; not tokenize, not the 400
        counts = next(iter(monitor._windows.values()))
        assert counts.bins["language"][0] == 4 and counts.n == 4
        assert not hasattr(app.state, "response_tap")  # capture stays off: the monitor does not use its tap
    ws = monitor.window_store()  # the lifespan's end wrote this process's counts
    assert [(m, k) for m, _, k in ws.pending()] == [(engine.model_name, 1)]


def test_the_collector_exports_every_named_family():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    monitor = ServedMonitor(MonitorSettings(), store=object(), models=["m"])
    monitor.snapshot = {"m": ModelSnapshot("m", 0.25, 4, 1, {"quiet": 3, "fired": 1}, {"language": 1.5},
                                           {"language": 0.7}, "ready", {"empty": 0.1},
                                           Quality("m", 0.4, 10, 0.8, 30))}
    from autoglm.monitoring.served import _MonitorCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MonitorCollector(monitor))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = {s.name.removeprefix("autoglm:") for f in families for s in f.samples}
    assert names == set(MONITOR_METRICS)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    assert values[("autoglm:prediction_drift_rate", (("model_name", "m"),))] == 0.25
    assert values[("autoglm:drift_psi", (("model_name", "m"), ("signal", "language")))] == 1.5
    assert values[("autoglm:model_auc", (("model_name", "m"),))] == 0.8
    assert values[("autoglm:feedback_mean_rating", (("model_name", "m"),))] == 0.4


def test_a_huge_request_body_is_not_parsed_but_its_response_counts(tmp_path):
    import json

    from autoglm.gateway.store import open_store
    from autoglm.monitoring.served import MAX_PARSED_BODY

    with open_store(tmp_path / "state.db") as store:
        monitor = ServedMonitor(MonitorSettings(), store, models=["m"])
        big = json.dumps({"messages": [{"role": "user", "content": "hello " * (MAX_PARSED_BODY // 5)}]}).encode()
        small = json.dumps({"messages": [{"role": "user", "content": "hello"}]}).encode()
        choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        response = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "usage": {"prompt_tokens": 9},
                    "choices": [choice]}
        monitor.submit("-", big, response)
        monitor.submit("-", small, response)
        monitor.tick(force=True)
        counts = next(iter(monitor._windows.values()))
        assert counts.n == 2 and sum(counts.bins["answer"]) == 2 and sum(counts.bins["language"]) == 1
