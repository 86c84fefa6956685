"""Pipeline files: valid files load with defaults; every kind of mistake is one `file:line key` error."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autoglm.errors import ConfigError
from autoglm.training.loader import load_pipeline_file, parse_pipeline_text
from autoglm.training.schema import CausalLMConfig, TabularConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipeline_text(textwrap.dedent(text), name="p.yaml")
    return str(info.value)


def test_minimal_file_gets_defaults(tmp_path):
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text("name: demo\ndata: {train: data/train.jsonl}\ntrain: {trainer: causal-lm}\n")
    config = load_pipeline_file(path)
    assert isinstance(config.train, CausalLMConfig)
    assert config.train.method == "lora" and config.train.model == "autoglm-demo"
    assert config.register_ is False and config.evaluate is not False
    # relative data paths start at the file's folder, wherever the command runs
    assert config.data.files() == [path.parent.resolve() / "data" / "train.jsonl"]


def test_unknown_key_in_a_trainer_section_points_at_its_line_with_did_you_mean():
    msg = error_of("""\
        name: demo
        data: {train: t.csv}
        train:
          trainer: tabular
          target: y
          estimater: lightgbm
        """)
    assert msg.startswith("p.yaml:6 train.estimater: unknown key 'estimater'; did you mean 'estimator'?")


def test_wrong_value_names_the_choices_and_the_line():
    msg = error_of("""\
        name: demo
        data: {train: t.jsonl}
        train:
          trainer: causal-lm
          method: lorra
        """)
    assert msg == "p.yaml:5 train.method: expected one of full, lora; got 'lorra'"


def test_unknown_trainer_and_missing_trainer():
    assert "expected one of causal-lm, tabular, fusion; got 'causal-lmm'" in error_of(
        "name: d\ndata: {train: a}\ntrain:\n  trainer: causal-lmm\n")
    assert error_of("name: d\ndata: {train: a}\ntrain:\n  lr: 1\n").startswith("p.yaml:3 train: the key 'trainer' is missing")


def test_cross_field_rules_and_register_key():
    msg = error_of("""\
        name: demo
        data: {train: t.csv}
        train:
          trainer: tabular
          target: y
          guards:
            - type: drift
            - type: explosion
        """)
    assert msg.startswith("p.yaml:8 train.guards[1].type: the explosion guard needs a neural model")
    assert error_of("name: d\ndata: {train: a}\ntrain: {trainer: causal-lm}\nregistr: {}\n").startswith(
        "p.yaml:4 registr: unknown key 'registr'; did you mean 'register'?")
    config = parse_pipeline_text("name: d\ndata: {train: a}\ntrain: {trainer: tabular, target: y}\n"
                                 "register: {alias: champion}\n")
    assert isinstance(config.train, TabularConfig) and config.register_.alias == "champion"


def test_range_and_adaptive_lr_order():
    assert error_of("name: d\ndata: {train: a}\ntrain:\n  trainer: causal-lm\n  lr: -1\n").startswith(
        "p.yaml:5 train.lr: input should be greater than 0")
    assert "low (0.1) must be below high (0.001)" in error_of(
        "name: d\ndata: {train: a}\ntrain:\n  trainer: causal-lm\n  adaptive_lr: {low: 0.1, high: 0.001}\n")


def test_empty_and_missing_files(tmp_path):
    assert "is empty; a pipeline needs at least" in error_of("")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(path):
    config = load_pipeline_file(path)
    for f in config.data.files():
        assert f.is_file(), f"{path.name}: {f} is missing"
