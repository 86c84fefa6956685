"""Closed-loop guards: data drift (KL/PSI), structure update (attention heads), parameter reset."""
from autoglm.training.guards._base import Guard, GuardContext, create_guard, guard_names, register_guard

__all__ = ["Guard", "GuardContext", "create_guard", "guard_names", "register_guard"]
