"""deploy/: the alert rules, scrape config and Grafana dashboard parse and only use metrics we export."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from autoglm.engine.io_struct import EngineStats
from autoglm.monitoring.metrics import ServerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"autoglm:[a-z0-9_]+")


class _Engine:
    def stats(self) -> EngineStats:
        return EngineStats()


def exported_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    m = ServerMetrics({"m": _Engine()})
    for child in (m.prompt_tokens, m.generation_tokens, m.ttft, m.itl, m.e2e, m.queue_time):
        child.labels("m")
    m.request_success.labels("m", "stop")
    for c in (m.cache_hits, m.cache_misses, m.rate_limited, m.upstream_errors):
        c.labels("m", "k")
    m.auth_failures.labels("", "", "missing_key")
    m.http_requests.labels("/v1/models", "200")
    from autoglm.monitoring.served import MONITOR_METRICS  # the served-model monitor's (test_monitor_settings.py)

    names = {s.name for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}
    return names | {"autoglm:" + n for n in MONITOR_METRICS}


def test_alert_rules_cover_the_asked_conditions_with_real_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    exported = exported_names()
    for name, rule in alerts.items():
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= exported, (name, used - exported)
        assert rule["annotations"]["summary"]
    text = " ".join(r["expr"] for r in alerts.values())
    for needed in ("num_requests_waiting", "time_to_first_token_seconds_bucket", "kv_cache_usage_perc",
                   "http_requests_total", "auth_failures_total"):
        assert "autoglm:" + needed in text, needed
    assert "0.9" in alerts["AutoGLMKVCacheNearlyFull"]["expr"]


def test_scrape_config_points_at_metrics_and_the_rules():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and "alerts.yml" in cfg["rule_files"]
    assert "credentials_file" in job["authorization"]  # the admin key is never inlined


def test_dashboard_panels_use_exported_metrics_and_the_model_variable():
    dash = json.loads((DEPLOY / "grafana" / "autoglm-dashboard.json").read_text())
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"model_name", "datasource"} <= variables
    exported = exported_names()
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(METRIC.findall(target["expr"]))
    assert used <= exported, used - exported
    for needed in ("num_requests_running", "kv_cache_usage_perc", "time_to_first_token_seconds_bucket",
                   "inter_token_latency_seconds_bucket", "e2e_request_latency_seconds_bucket",
                   "request_queue_time_seconds_bucket", "cache_hits_total", "rate_limited_total",
                   "auth_failures_total", "upstream_errors_total", "generation_tokens_total"):
        assert "autoglm:" + needed in used, needed
    assert any('model_name=~"$model_name"' in t["expr"] for p in dash["panels"] for t in p["targets"])
