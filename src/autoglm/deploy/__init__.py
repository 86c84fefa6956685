"""Deploy files: ``autoglm deploy FILE.yaml`` serves several models behind one endpoint.

:mod:`~autoglm.deploy.schema` is the typed config, :mod:`~autoglm.deploy.loader` reads YAML with line
numbers for errors, :mod:`~autoglm.deploy.runner` turns it into the parts' settings,
:mod:`~autoglm.deploy.assembly` is the one function that builds and runs them (``autoglm serve`` is a
deploy with one model) and :mod:`~autoglm.deploy.shutdown` drains on SIGTERM / Ctrl-C.
:mod:`~autoglm.deploy.live` changes what a running server serves (launch, stop, zero-downtime swap;
``/admin/deployments``) and :mod:`~autoglm.deploy.redeploy` asks servers to swap after a promotion.
Importing this package does no work.
"""
from __future__ import annotations

from autoglm.deploy.loader import load_deploy_file, parse_deploy_text
from autoglm.deploy.schema import DeployConfig, ModelConfig

__all__ = ["load_deploy_file", "parse_deploy_text", "DeployConfig", "ModelConfig"]
