"""Deploy-file loader: one error naming file, LINE and key path; env references; the examples load."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.deploy.loader import format_loc, load_deploy_file, parse_deploy_text
from autoglm.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
models:
  - name: autoglm-demo
    aliases: [demo]
  - name: second
    source: autoglm-demo
    quantize: fp32
    max_num_seqs: 4
    replicas: 2
    fallback: demo
  - name: remote-demo
    upstream:
      url: http://127.0.0.1:9/v1
      api_key: ${UPSTREAM_KEY}
gateway:
  keys:
    - name: app
      models: [second]
server:
  port: 8123
"""


def error_of(text: str, name: str = "autoglm.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_deploy_text(text, name)
    return str(info.value)


def test_good_file_is_typed(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-secret")
    cfg = parse_deploy_text(GOOD)
    assert [m.name for m in cfg.models] == ["autoglm-demo", "second", "remote-demo"]
    second = cfg.models[1]
    assert (second.quantize, second.max_num_seqs, second.replicas, second.model_source) == ("fp32", 4, 2, "autoglm-demo")
    assert cfg.models[0].model_source == "autoglm-demo"  # source defaults to the name
    remote = cfg.models[2]
    assert remote.is_remote and remote.upstream.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(cfg)
    assert cfg.server.port == 8123 and cfg.gateway.keys[0].models == ["second"]


def test_bad_value_names_file_line_and_path(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "x")
    text = GOOD.replace("quantize: fp32", "quantize: int3")
    assert error_of(text) == ("autoglm.yaml:6 models[1].quantize: expected one of auto, none, fp32, fp16, bf16, "
                              "int8, int4; got 'int3'")


def test_unknown_key_with_did_you_mean(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "x")
    msg = error_of(GOOD.replace("    replicas: 2", "    replica: 2"))
    assert msg.startswith("autoglm.yaml:8 models[1].replica: unknown key 'replica'; did you mean 'replicas'?")
    msg = error_of("modles:\n  - name: a\n")
    assert msg.startswith("autoglm.yaml:1 modles: unknown key 'modles'; did you mean 'models'?")
    msg = error_of("models:\n  - name: a\nserver:\n  prot: 1\n")
    assert msg.startswith("autoglm.yaml:4 server.prot: unknown key 'prot'; did you mean 'port'?")


def test_missing_required_key_points_at_its_mapping():
    assert error_of("server:\n  port: 1\nmodels:\n  - source: autoglm-demo\n") == \
        "autoglm.yaml:4 models[0].name: this required key is missing"
    assert error_of("server:\n  port: 1\n").startswith("autoglm.yaml:1 models: this required key is missing")


def test_wrong_types_and_ranges():
    assert error_of("models:\n  - name: a\n    max_num_seqs: lots\n").startswith(
        "autoglm.yaml:3 models[0].max_num_seqs: input should be a valid integer")
    assert error_of("models:\n  - name: a\n\n\n    replicas: 0\n").startswith(
        "autoglm.yaml:5 models[0].replicas: input should be greater than 0; got 0")
    assert error_of("models:\n- name: a\nserver: {port: 70000}\n").startswith("autoglm.yaml:3 server.port:")
    assert error_of("models:\n- name: a\n  upstream: {url: 'ftp://x'}\n") == \
        "autoglm.yaml:3 models[0].upstream.url: expected an http:// or https:// URL; got 'ftp://x'"


def test_cross_field_rules_point_at_the_line():
    assert error_of("models:\n- name: a\n- name: b\n  fallback: c\n") == \
        "autoglm.yaml:4 models[1].fallback: no model is named 'c'; use one of a, b"
    assert error_of("models:\n- name: a\n- name: b\n  aliases: [x, a]\n").startswith(
        "autoglm.yaml:4 models[1].aliases[1]: the name 'a' is already used by models[0]")
    msg = error_of("models:\n- name: a\n  replicas: 2\n  upstream:\n    url: http://x\n")
    assert msg.startswith("autoglm.yaml:2 models[0]: a model with 'upstream' is served remotely")
    assert error_of("models:\n- name: a\ngateway:\n  keys:\n  - name: k\n    models: [zz]\n").startswith(
        "autoglm.yaml:6 gateway.keys[0].models[0]: no model is named 'zz'")


def test_env_references(monkeypatch):
    monkeypatch.delenv("AUTOGLM_TEST_UNSET", raising=False)
    text = "models:\n- name: a\n  upstream:\n    url: http://x\n    api_key: ${AUTOGLM_TEST_UNSET}\n"
    assert error_of(text) == ("autoglm.yaml:5 models[0].upstream.api_key: environment variable AUTOGLM_TEST_UNSET "
                              "is not set; export it, or write ${AUTOGLM_TEST_UNSET:-default} to give a default")
    cfg = parse_deploy_text(text.replace("UNSET}", "UNSET:-fallback-key}"))
    assert cfg.models[0].upstream.api_key.get_secret_value() == "fallback-key"
    monkeypatch.setenv("AUTOGLM_TEST_HOST", "10.1.2.3")
    cfg = parse_deploy_text("models:\n- name: a\nserver:\n  host: ${AUTOGLM_TEST_HOST}\n"
                            "gateway:\n  admin_key: ${AUTOGLM_TEST_UNSET:-}\n  state_store: 'a$${b}'\n")
    assert cfg.server.host == "10.1.2.3"
    assert cfg.gateway.admin_key is None  # `${X:-}` with X unset means "not given"
    assert cfg.gateway.state_store == "a${b}"


def test_yaml_syntax_duplicates_and_empty_files(tmp_path):
    assert error_of("models:\n  - name: [a\n").startswith("autoglm.yaml:3: not valid YAML")
    assert error_of("models:\n- name: a\n  name: b\n") == \
        "autoglm.yaml:3 models[0].name: the key 'name' appears twice in this mapping"
    assert "is empty" in error_of("")
    with pytest.raises(ConfigError, match="does not exist"):
        load_deploy_file(tmp_path / "nope.yaml")
    f = tmp_path / "deploy.yaml"
    f.write_text("models:\n- name: a\n  device: tpu\n")
    with pytest.raises(ConfigError, match=r"deploy.yaml:3 models\[0\].device: expected one of auto, cpu"):
        load_deploy_file(f)


def test_format_loc():
    assert format_loc(("models", 1, "upstream", "urls", 0)) == "models[1].upstream.urls[0]"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_are_valid(example, monkeypatch):
    monkeypatch.delenv("AUTOGLM_ADMIN_KEY", raising=False)
    cfg = load_deploy_file(EXAMPLES / example)
    assert cfg.models


def test_examples_exist():
    assert {"demo.yaml", "two-models.yaml", "remote-upstream.yaml", "glm-4-9b-chat.yaml"} <= \
        {p.name for p in EXAMPLES.glob("*.yaml")}
