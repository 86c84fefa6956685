"""The three guards are registered by name and built from a pipeline file's guard section."""
from __future__ import annotations

import pytest

from autoglm.errors import ConfigError
from autoglm.training.guards import create_guard, guard_names
from autoglm.training.guards.drift import DriftGuard
from autoglm.training.guards.explosion import ExplosionGuard
from autoglm.training.guards.structure import StructureGuard
from autoglm.training.schema import GuardConfig


def test_registered_by_name():
    assert {"drift", "explosion", "structure"} <= set(guard_names())


@pytest.mark.parametrize("section, cls, attr, value", [
    ({"type": "drift", "threshold": 0.2, "bins": 20}, DriftGuard, "settings", {"threshold": 0.2, "bins": 20}),
    ({"type": "explosion", "z_threshold": 8.0, "warmup": 5}, ExplosionGuard, "__dict__",
     {"z_threshold": 8.0, "warmup": 5}),
    ({"type": "structure", "patience": 2, "unit": "head"}, StructureGuard, "settings", {"patience": 2, "unit": "head"}),
])
def test_built_from_a_guard_config(section, cls, attr, value):
    cfg = GuardConfig(**section)
    guard = create_guard(cfg.type, **cfg.settings())
    assert isinstance(guard, cls)
    assert {k: getattr(guard, attr)[k] for k in value} == value


@pytest.mark.parametrize("name", ["drift", "explosion", "structure"])
def test_unknown_setting_lists_the_allowed_ones(name):
    with pytest.raises(ConfigError) as err:
        create_guard(name, no_such_setting=1)
    assert "'no_such_setting'" in str(err.value) and "allowed:" in str(err.value) and name in str(err.value)
