"""Read a deploy file: YAML -> ``${ENV}`` substitution -> :class:`~autoglm.deploy.schema.DeployConfig`.

The reading, ``${VAR}`` substitution and ``file:line key`` errors are :mod:`autoglm.configfile`'s;
this module adds the deploy schema and its cross-field rules. It knows nothing about engines or servers.
"""
from __future__ import annotations

from pathlib import Path

from autoglm.configfile import format_loc, load_yaml_config, parse_yaml_config
from autoglm.deploy.schema import DeployConfig, reference_errors

__all__ = ["load_deploy_file", "parse_deploy_text", "format_loc"]

_EMPTY = "it needs at least a 'models:' list (see examples/demo.yaml)"


def parse_deploy_text(text: str, name: str = "<deploy file>") -> DeployConfig:
    """Validate deploy-file ``text``; ``name`` is what errors call the file."""
    return parse_yaml_config(text, name, DeployConfig, problems=reference_errors, empty_hint=_EMPTY)


def load_deploy_file(path: str | Path) -> DeployConfig:
    """Read and validate a deploy file; a missing or unreadable file is a ConfigError too."""
    return load_yaml_config(path, "deploy file", DeployConfig, problems=reference_errors, empty_hint=_EMPTY)
