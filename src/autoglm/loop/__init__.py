"""The improvement loop: triggers -> export -> pipeline -> gate -> promote (an MLflow alias) or refuse.

``improve:`` in a deploy file (:mod:`autoglm.loop.schema`) says when and how;
:func:`autoglm.loop.controller.run_loop_once` runs one turn; :mod:`autoglm.loop.promote` moves the
``champion`` alias by hand or for the loop. Swapping the served model follows the alias; this package
does not restart servers.
"""
from __future__ import annotations

__all__ = ["run_loop_once", "load_improve"]


def __getattr__(name: str):  # lazy: importing the package must stay cheap (no MLflow, no pandas)
    if name in ("run_loop_once", "load_improve"):
        from autoglm.loop import controller

        return getattr(controller, name)
    raise AttributeError(name)
