"""One serving assembly: `autoglm serve` flags and a deploy file that say the same build the same server.

Nothing is started here: :func:`assemble` builds engines (not loaded), router, app and gate, so the two
paths can be compared part by part. Also: no library module imports the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autoglm.cli.main import build_parser
from autoglm.cli.serve import deploy_config_from_args, settings_from_args
from autoglm.deploy.assembly import assemble
from autoglm.deploy.loader import parse_deploy_text
from autoglm.deploy.runner import engine_settings_for, server_settings
from autoglm.deploy.shutdown import ShutdownGate
from autoglm.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src" / "autoglm"


@pytest.fixture(autouse=True)
def _no_gateway_env(monkeypatch):
    for var in ("AUTOGLM_STATE_URL", "AUTOGLM_ADMIN_KEY", "AUTOGLM_KEY_PEPPER", "AUTOGLM_REDIS_URL",
                "AUTOGLM_CACHE", "AUTOGLM_RATELIMIT"):
        monkeypatch.delenv(var, raising=False)


def serve_config(*flags: str):
    return deploy_config_from_args(build_parser().parse_args(["serve", *flags]))


def routes_of(app) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((r.path, tuple(sorted(getattr(r, "methods", None) or ()))) for r in app.routes)


def engine_view(parts) -> dict:
    return {label: (type(e).__name__, e.settings) for label, e in parts.engines.items()}


def test_serve_flags_and_deploy_file_assemble_the_same_server(tmp_path):
    state = tmp_path / "state.db"
    flags = serve_config("--model", "autoglm-demo", "--served-model-name", "demo", "--quantize", "int8",
                         "--device", "cpu", "--max-model-len", "512", "--max-num-seqs", "4", "--max-queue", "9",
                         "--prefill-chunk", "64", "--prefix-cache-tokens", "0", "--request-timeout", "12",
                         "--max-concurrency", "3", "--state-url", str(state), "--cache", "none", "--port", "9123",
                         "--shutdown-grace", "7", "--access-log", "off", "--log-level", "warning",
                         "--max-request-bytes", "65536", "--max-schema-bytes", "4096", "--allow-control-tokens")
    text = f"""\
models:
  - name: demo
    source: autoglm-demo
    quantize: int8
    device: cpu
    max_model_len: 512
    max_num_seqs: 4
    max_queue: 9
    prefill_chunk: 64
    prefix_cache_tokens: 0
    request_timeout: 12
    max_concurrency: 3
gateway:
  state_store: {state}
  cache: {{backend: none}}
server:
  port: 9123
  log_level: warning
  access_log: "off"
  shutdown_grace: 7
  max_request_bytes: 65536
  max_schema_bytes: 4096
  allow_control_tokens: true
"""
    from_file = parse_deploy_text(text)
    a, b = assemble(flags), assemble(from_file)
    assert routes_of(a.app) == routes_of(b.app)
    assert "/v1/chat/completions" in [p for p, _ in routes_of(a.app)]
    assert [(r.name, r.aliases, [x.label for x in r.backends]) for r in a.router.routes] == \
           [(r.name, r.aliases, [x.label for x in r.backends]) for r in b.router.routes] == [("demo", [], ["demo"])]
    assert engine_view(a) == engine_view(b)
    assert a.server == b.server
    assert a.server.shutdown_grace == 7 and a.server.gateway.model_concurrency == {"demo": 3}
    assert (a.server.max_request_bytes, a.server.max_schema_bytes, a.server.allow_control_tokens) == (65536, 4096, True)
    assert isinstance(a.asgi, ShutdownGate) and a.asgi.app is a.app
    # and what `autoglm serve` has always reported as its settings is read off the same config
    engine, server = settings_from_args(build_parser().parse_args(["serve", "--model", "m", "--max-num-seqs", "2"]))
    assert (engine.model, engine.name, engine.max_num_seqs) == ("m", "m", 2)


def test_a_different_setting_shows_up_as_a_different_engine(tmp_path):
    a = assemble(serve_config("--model", "autoglm-demo", "--max-num-seqs", "4", "--no-gateway"))
    b = assemble(serve_config("--model", "autoglm-demo", "--max-num-seqs", "8", "--no-gateway"))
    assert engine_view(a) != engine_view(b)
    assert a.server.gateway is None  # --no-gateway: no key store, limits or cache


def test_serve_defaults_are_the_deploy_defaults():
    flags = serve_config()
    file = parse_deploy_text("models:\n- name: autoglm-demo\n")
    assert engine_settings_for(flags.models[0]) == engine_settings_for(file.models[0])
    assert server_settings(flags) == server_settings(file)
    assert server_settings(flags).shutdown_grace == 30.0


def test_env_defaults_of_serve_are_resolved_into_the_config(monkeypatch):
    monkeypatch.setenv("AUTOGLM_CACHE", "none")
    monkeypatch.setenv("AUTOGLM_REDIS_URL", "redis://127.0.0.1:6379/5")
    cfg = serve_config("--api-key", "static-k")
    assert cfg.gateway.cache.backend == "none" and cfg.gateway.redis_url == "redis://127.0.0.1:6379/5"
    assert cfg.gateway.rate_limits.backend == "redis"  # a Redis URL makes rate limits shared, as before
    assert server_settings(cfg).api_keys == ["static-k"]
    assert "static-k" not in repr(cfg)  # a secret in the config, never in its repr


def test_bad_env_value_is_one_config_error(monkeypatch):
    monkeypatch.setenv("AUTOGLM_CACHE", "floppy")
    with pytest.raises(ConfigError, match="floppy"):
        serve_config()


def test_replicas_are_labelled_by_index_one_replica_by_name():
    parts = assemble(parse_deploy_text("models:\n- name: a\n  replicas: 2\n- name: b\n"
                                       "gateway:\n  enabled: false\n"))
    assert list(parts.engines) == ["a#0", "a#1", "b"]


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_library_module_imports_the_cli():
    entry_points = {SRC / "__main__.py"}  # `python -m autoglm` is the CLI's own entry point
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path in entry_points or (SRC / "cli") in path.parents:
            continue
        for line, name in _imports(ast.parse(path.read_text(), str(path))):
            if name == "autoglm.cli" or name.startswith("autoglm.cli."):
                offenders.append(f"{path.relative_to(SRC.parent)}:{line} imports {name}")
    assert offenders == []


def test_the_import_check_sees_an_import_inside_a_function():
    tree = ast.parse("def f():\n    from autoglm.cli.serve import _x\n")
    assert (2, "autoglm.cli.serve") in _imports(tree)


def test_guided_pick_first_from_a_deploy_file_reaches_the_engine_settings():
    on = parse_deploy_text("models:\n- name: autoglm-demo\n")
    off = parse_deploy_text("models:\n- name: autoglm-demo\n  guided_pick_first: false\n")
    assert engine_settings_for(on.models[0]).guided_pick_first is True
    assert engine_settings_for(off.models[0]).guided_pick_first is False
    with pytest.raises(ConfigError, match="guided_pick_first"):
        parse_deploy_text("models:\n- name: autoglm-demo\n  guided_pick_first: sometimes\n")
