"""``--server URL`` / ``--api-key KEY`` for the verbs that also work against a running server.

With ``--server`` (or ``AUTOGLM_SERVER``) a verb goes through :class:`autoglm.Client` to the server's
admin API instead of reading local files; ``--api-key`` (or ``AUTOGLM_API_KEY``) is its admin key.
Without either, the verb works on this machine's ``$AUTOGLM_HOME`` as before. Errors from the server
are :class:`autoglm.client.APIError` (an AutoGLMError: one line, non-zero exit).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_server_arguments", "remote_client"]


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", default=None,
                   help="ask a running server's admin API instead of local files (default: $AUTOGLM_SERVER)")
    p.add_argument("--api-key", metavar="KEY", default=None, dest="server_api_key",
                   help="the server's admin key (default: $AUTOGLM_API_KEY; prefer the variable)")


def remote_client(args: argparse.Namespace) -> Any:
    """The :class:`autoglm.Client` these arguments ask for, or None for local files."""
    url = getattr(args, "server", None) or os.environ.get("AUTOGLM_SERVER") or None
    if not url:
        return None
    from autoglm.client import Client

    return Client(url, api_key=getattr(args, "server_api_key", None) or os.environ.get("AUTOGLM_API_KEY") or None)
