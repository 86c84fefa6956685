"""``autoglm deploy FILE.yaml``: serve every model a deploy file declares behind one endpoint.

Thin: read and validate the file (a bad file is one error line naming file, line and key, before
anything starts), print the plan, stop there with ``--dry-run``; otherwise check the port, then hand
over to :func:`autoglm.deploy.assembly.serve` (the assembly ``autoglm serve`` uses too). SIGTERM or
Ctrl-C drains for ``server.shutdown_grace`` seconds and exits 0. ``autoglm serve --config FILE`` calls
:func:`run_config`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from autoglm._runtime import run_async, tune_allocator

__all__ = ["register", "run", "run_config"]


def register(subparsers: Any) -> None:
    from autoglm.cli.serve import LOG_LEVELS, _non_negative_float, _port

    p = subparsers.add_parser(
        "deploy",
        help="serve the models of a deploy file (YAML) behind one OpenAI-compatible endpoint",
        description="Validate a deploy file, pull what is missing, start every model and the gateway. "
                    "Examples: examples/*.yaml.",
    )
    p.add_argument("file", metavar="FILE.yaml", help="the deploy file")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    p.add_argument("--host", default=None, help="override server.host")
    p.add_argument("--port", default=None, type=_port, help="override server.port")
    p.add_argument("--log-level", default=None, choices=LOG_LEVELS, help="override server.log_level")
    p.add_argument("--shutdown-grace", default=None, type=_non_negative_float, metavar="S",
                   help="override server.shutdown_grace (seconds running requests get on SIGTERM / Ctrl-C)")
    from autoglm.cli import deploy_kubernetes

    deploy_kubernetes.add_arguments(p)  # --to kubernetes: write manifests instead of serving
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "to", None) == "kubernetes":
        from autoglm.cli import deploy_kubernetes

        return deploy_kubernetes.run(args)
    return run_config(args.file, dry_run=args.dry_run, host=args.host, port=args.port, log_level=args.log_level,
                      shutdown_grace=args.shutdown_grace)


def run_config(path: str, *, dry_run: bool = False, host: str | None = None, port: int | None = None,
               log_level: str | None = None, shutdown_grace: float | None = None) -> int:
    from autoglm.deploy.loader import load_deploy_file
    from autoglm.deploy.runner import plan_lines

    config = load_deploy_file(path)
    overrides = {k: v for k, v in (("host", host), ("port", port), ("log_level", log_level),
                                   ("shutdown_grace", shutdown_grace)) if v is not None}
    if overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    print(f"autoglm: {path} is valid")
    for line in plan_lines(config):
        print(f"  {line}")
    if dry_run:
        return 0

    from autoglm.deploy.assembly import check_port_free, is_loopback, serve

    level = "DEBUG" if config.server.log_level == "trace" else config.server.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    if not is_loopback(config.server.host) and config.gateway.admin_key is None and not config.gateway.keys:
        print(f"autoglm: warning: listening on {config.server.host} without keys or an admin key: anyone who "
              "can reach this machine can use the models.", file=sys.stderr, flush=True)
    check_port_free(config.server.host, config.server.port)
    if config.server.grpc_port is not None:
        check_port_free(config.server.host, config.server.grpc_port)
    try:
        tune_allocator()
        run_async(serve(config, echo=lambda s: print(s, flush=True), base_dir=Path(path).resolve().parent))
    except KeyboardInterrupt:
        pass  # Ctrl-C before the server was up (pulling, loading); once up, a signal drains and returns
    print("autoglm: stopped", file=sys.stderr)
    return 0
