"""Deploy files: ``autoglm deploy FILE.yaml`` serves several models behind one endpoint.

:mod:`~autoglm.deploy.schema` is the typed config, :mod:`~autoglm.deploy.loader` reads YAML with line
numbers for errors, :mod:`~autoglm.deploy.runner` pulls, starts engines and the server. Importing this
package does no work.
"""
from __future__ import annotations

from autoglm.deploy.loader import load_deploy_file, parse_deploy_text
from autoglm.deploy.schema import DeployConfig, ModelConfig

__all__ = ["load_deploy_file", "parse_deploy_text", "DeployConfig", "ModelConfig"]
