"""The web console at ``/ui``: configure, launch, chat, watch and improve from a browser.

:func:`install_console` is called by :func:`autoglm.api.app.build_app`. It mounts

* the console's pages: hand-written HTML, CSS and ES-module JavaScript shipped in ``static/`` as
  package data (no build step, no framework, nothing fetched from elsewhere), at ``/ui`` when
  ``server.ui`` is on (default: on when the server listens on a loopback address; ``--no-ui`` or
  ``server.ui: false`` turns it off); see :mod:`autoglm.console.assets`;
* ``GET /ui/api/session`` (always 200): what the caller's key may see and which capabilities this
  server has, so the pages ask for a key, hide what the key may not use and say what to install,
  without probing routes that would answer 401 or 404;
* three helper routes the console (and any client) uses, in :mod:`autoglm.console.routes`:
  ``GET /admin/plan`` (the precision planner's table), ``GET /admin/schema/deploy`` (the deploy
  file's JSON schema, from which the configuration form is generated) and ``POST /admin/validate/deploy``
  (the loader of ``autoglm deploy``, so errors carry the same ``line key``). They are mounted whether or
  not the pages are.

The pages talk to the server over HTTP only (the OpenAI routes, the admin routes, ``/metrics``); this
package knows nothing about engines, and its pages nothing about Python.
"""
from __future__ import annotations

from typing import Any

__all__ = ["install_console", "console_enabled"]


def console_enabled(server: Any) -> bool:
    """Whether ``server`` (a :class:`~autoglm.config.ServerSettings`) serves the pages at ``/ui``."""
    ui = getattr(server, "ui", None)
    if ui is not None:
        return bool(ui)
    from autoglm.deploy.assembly import is_loopback

    return is_loopback(getattr(server, "host", "127.0.0.1"))


def install_console(app: Any, server: Any) -> None:
    """Serve the console's pages and assets under ``/ui`` on ``app``, and its helper routes."""
    from autoglm.console.routes import install_console_routes

    install_console_routes(app, server)
    if console_enabled(server):
        from autoglm.console.assets import install_assets

        install_assets(app)
