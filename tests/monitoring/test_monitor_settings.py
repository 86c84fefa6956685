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
    on_cache_hit = None


def test_turned_off_it_adds_nothing():
    app, metrics, owner = FastAPI(), _Metrics(), _Owner()
    server = ServerSettings(monitoring=MonitorSettings(enabled=False))
    assert install_monitoring(app, owner, server, None, metrics) is None
    assert metrics.registry.collectors == [] and owner.on_cache_hit is None
    assert getattr(app.state, "response_tap", None) is None
    assert not any(getattr(r, "path", "") == "/v1/monitor/labels" for r in app.routes)


def test_on_it_taps_responses_and_cache_hits_and_keeps_the_previous_tap(tmp_path):
    app, metrics, owner = FastAPI(), _Metrics(), _Owner()
    seen = []

    async def capture(request, response):
        seen.append(response["id"])

    app.state.response_tap = capture
    server = ServerSettings(monitoring=MonitorSettings(store=f"sqlite:///{tmp_path / 'm.db'}"))
    monitor = install_monitoring(app, owner, server, None, metrics)
    assert isinstance(monitor, ServedMonitor) and len(metrics.registry.collectors) == 1
    assert owner.on_cache_hit is not None

    class _Req:
        scope = {"state": {}}

        async def body(self):
            return b'{"messages": [{"role": "user", "content": "hi"}]}'

    import asyncio

    response = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [], "usage": {}}
    asyncio.run(app.state.response_tap(_Req(), response))
    asyncio.run(owner.on_cache_hit(_Req(), {**response, "id": "chatcmpl-2"}))
    assert seen == ["chatcmpl-1"]  # capture still sees its responses (cache hits are not its business)
    assert len(monitor._pending) == 2
    monitor.tick(force=True)
    assert monitor.observed == 2 and monitor.snapshot["m"].by_state == {}
    from autoglm.api.errors import install_error_handlers

    install_error_handlers(app)
    with TestClient(app) as client:  # the labels route is there: an unknown prediction is a 404
        assert client.post("/v1/monitor/labels", json={"id": "nope", "label": 1}).status_code == 404


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
