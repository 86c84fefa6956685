"""Guided-decoding backends: who computes the token masks, chosen per engine by name.

A backend turns a :class:`~autoglm.engine.io_struct.GuidedSpec` into a per-request
:class:`GuidedConstraint` and computes the masks of *all* guided sequences of a step in one call
(:meth:`GuidedBackend.fill_masks`), so a backend can do them together and in parallel.

Registered backends:
  * ``builtin``: the byte-trie automaton of this package (JSON only; exact closing cost; masks one
    sequence after another, 5-12 ms per token at a 151k vocabulary);
  * ``llguidance``: llguidance's ``LLMatcher`` (every JSON-schema keyword of OpenAI's subset, regex,
    choice and Lark/GBNF grammars; batched masks that release the GIL), with the builtin automaton
    running beside it as a *budget filter* (see :mod:`autoglm.engine.guided.llg`).
``auto`` is ``llguidance`` when it is installed (the ``guided`` extra), else ``builtin``.

The contract every constraint keeps, whatever the backend: special tokens other than the EOS that
ends a complete value are never allowed; ``done`` turns true when a complete value is written; for
JSON kinds the value is closed before the budget runs out (``check`` after sampling, see
:func:`recheck`). Knows nothing about the model, the sampler or HTTP.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from autoglm.errors import InvalidRequestError

__all__ = [
    "GuidedBackend",
    "GuidedConstraint",
    "GuidedDecodingError",
    "BuiltinBackend",
    "register_backend",
    "get_backend",
    "resolve_backend",
    "backend_names",
    "GUIDED_BACKEND_CHOICES",
    "JSON_KINDS",
]

JSON_KINDS = ("json_object", "json_schema")
GUIDED_BACKEND_CHOICES = ("auto", "builtin", "llguidance")


class GuidedDecodingError(InvalidRequestError):
    """A constraint cannot go on for one request (its grammar engine hit a limit, or the sampled token
    is refused): that request fails with this error (HTTP 400), the engine and the other sequences
    carry on. The engine sets ``request_id`` and hands the error to that request's stream."""

    request_id: str | None = None


class GuidedConstraint(ABC):
    """The state of one guided output (one per sequence; not thread-safe).

    ``version`` counts the state changes (every :meth:`advance`, and any rollback an implementation
    offers): a mask computed ahead (:mod:`autoglm.engine.guided.overlap`) is used only while it matches.
    """

    backend: str = ""
    version: int = 0

    @property
    @abstractmethod
    def done(self) -> bool:
        """A complete value has been written; the request ends."""

    @abstractmethod
    def advance(self, token_id: int) -> None:
        """Accept the sampled token; ValueError when it could not come next."""

    @abstractmethod
    def allowed_token_ids(self, remaining_tokens: int) -> np.ndarray:
        """Boolean mask [vocab]: what may come next with ``remaining_tokens`` left (this one included)."""

    def check(self, token_id: int, remaining_tokens: int) -> bool:
        """After sampling from a fast mask: may ``token_id`` really come next? (False: the caller
        asks :meth:`exact_mask` and samples again.) Exact masks need no check."""
        return True

    def exact_mask(self, remaining_tokens: int) -> np.ndarray:
        return self.allowed_token_ids(remaining_tokens)

    @property
    def checks_picks(self) -> bool:
        """:meth:`allows` can answer now (a sampler may pick first and check; see
        :mod:`autoglm.engine.guided.overlap`)."""
        return False

    def allows(self, token_id: int, remaining_tokens: int) -> bool | None:
        """Without any mask: may ``token_id`` come next, by the language and by the budget, exactly as
        :meth:`exact_mask` would say? None when this constraint cannot tell without computing its mask
        (:attr:`checks_picks` is False: the caller masks before sampling)."""
        return None


class GuidedBackend(ABC):
    name: str = ""
    # True when fill_masks runs with the GIL released, so computing it on a worker thread beside the
    # forward pass saves time (a pure-Python backend would only slow the forward down)
    overlap: bool = False

    @abstractmethod
    def build(self, spec: Any, tokenizer: Any) -> GuidedConstraint:
        """A fresh constraint; InvalidRequestError for a spec this backend cannot use."""

    def fill_masks(self, constraints: list[GuidedConstraint], remaining: list[int]) -> list[np.ndarray]:
        """The masks of one step, in order (default: one after another)."""
        return [c.allowed_token_ids(r) for c, r in zip(constraints, remaining)]

    def mask_bias(self, constraints: list[GuidedConstraint], remaining: list[int],
                  out: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`fill_masks` as additive float32 rows [V] (0 where allowed, -inf elsewhere: adding one
        to a logits row is a vectorised pass, where a boolean ``masked_fill_`` is ~50x slower on CPU),
        in order; a backend may write them into the rows of ``out`` (a reused [n, V'] buffer)."""
        return [np.where(m, np.float32(0), np.float32(-np.inf)) for m in self.fill_masks(constraints, remaining)]


_BACKENDS: dict[str, Callable[[], GuidedBackend]] = {}
_INSTANCES: dict[str, GuidedBackend] = {}


def register_backend(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        _BACKENDS[name] = cls
        return cls
    return deco


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def llguidance_available() -> bool:
    return importlib.util.find_spec("llguidance") is not None


def resolve_backend(name: str | None) -> str:
    """``auto`` → ``llguidance`` when installed, else ``builtin``; a bad name is a ValueError."""
    name = (name or "auto").lower()
    if name == "auto":
        return "llguidance" if llguidance_available() else "builtin"
    if name not in _BACKENDS:
        raise ValueError(f"guided_backend {name!r} is not one of {', '.join(GUIDED_BACKEND_CHOICES)}")
    if name == "llguidance" and not llguidance_available():
        raise ValueError("guided_backend 'llguidance' needs the llguidance package: "
                         "pip install 'autoglm[guided]' (or use guided_backend: builtin)")
    return name


def get_backend(name: str | None = "auto") -> GuidedBackend:
    """The (shared, stateless apart from caches) backend instance for ``name``."""
    key = resolve_backend(name)
    backend = _INSTANCES.get(key)
    if backend is None:
        backend = _INSTANCES[key] = _BACKENDS[key]()
    return backend


def compute_masks(constraints: list[GuidedConstraint], remaining: list[int]) -> list[np.ndarray]:
    """Masks for every guided sequence of a step, grouped by backend (one batched call each)."""
    out: list[np.ndarray | None] = [None] * len(constraints)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(constraints):
        groups.setdefault(c.backend, []).append(i)
    for name, idx in groups.items():
        masks = _INSTANCES[name].fill_masks([constraints[i] for i in idx], [remaining[i] for i in idx])
        for i, m in zip(idx, masks):
            out[i] = m
    return out  # type: ignore[return-value]


@register_backend("builtin")
class BuiltinBackend(GuidedBackend):
    def build(self, spec: Any, tokenizer: Any) -> GuidedConstraint:
        if spec.kind not in JSON_KINDS:
            raise InvalidRequestError(
                f"guided decoding kind {spec.kind!r} needs the llguidance backend; install "
                "'autoglm[guided]' and serve with guided_backend auto or llguidance", param=_param(spec))
        from autoglm.engine.guided import build_constraint

        return build_constraint(spec, tokenizer)


def _param(spec: Any) -> str:
    return {"regex": "guided_regex", "choice": "guided_choice", "grammar": "guided_grammar"}.get(
        spec.kind, "response_format")


# importing registers it (llguidance itself is imported only when a constraint is built)
from autoglm.engine.guided import llg as _llg  # noqa: E402,F401
