"""The engine protocol and the registry of backends.

An engine takes :class:`~autoglm.engine.io_struct.EngineRequest` s (token ids and sampling
parameters) and streams :class:`~autoglm.engine.io_struct.RequestOutput` deltas. It owns a tokenizer
(for detokenization, stop strings, chat templates) but knows nothing about HTTP or OpenAI schemas.

A backend is one class registered by name with :func:`register_engine`; :func:`create_engine` builds
one from :class:`~autoglm.config.EngineSettings`. A new backend is one new file under ``backends/``.
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from autoglm.errors import UnsupportedError

if TYPE_CHECKING:
    from autoglm.config import EngineSettings
    from autoglm.engine.io_struct import EngineRequest, EngineStats, RequestOutput

__all__ = ["Engine", "register_engine", "create_engine", "available_engines", "auto_engine_name"]


class Engine(ABC):
    """One loaded model that generates for many concurrent requests.

    Attributes every backend sets after :meth:`start`:
      ``model_name`` (the served name), ``tokenizer`` (a transformers tokenizer with a chat
      template), ``max_model_len`` (prompt + output tokens), ``eos_token_ids``, ``description``
      (a one-line note for /v1/models, e.g. that the demo model's replies are noise).
      ``vision``: an :class:`~autoglm.engine.vision.VisionProcessor` when the model takes images in
      chat messages (``EngineRequest.mm_inputs``), else None (the API answers 400 to images).
    """

    model_name: str
    tokenizer: Any
    max_model_len: int
    eos_token_ids: list[int]
    description: str = ""
    vision: Any = None

    @abstractmethod
    async def start(self) -> None:
        """Load the model and start the background loop. Idempotent."""

    @abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Queue ``request`` and stream its outputs; the last one has ``finished=True``.

        Raises :class:`~autoglm.errors.OverloadedError` at once (before yielding) when the queue is
        full, and :class:`~autoglm.errors.InvalidRequestError` when the prompt does not fit.
        Closing the iterator early (client gone) aborts the request and frees its KV cache.
        """

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request and free its resources. Unknown ids are ignored."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """A cheap snapshot of queue and cache state."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the loop and release the model."""


# name -> "module:Class" (imported lazily so optional extras are only needed when used)
_REGISTRY: dict[str, str | type[Engine]] = {
    "transformers": "autoglm.engine.backends.transformers:TransformersEngine",
    "llamacpp": "autoglm.engine.backends.llamacpp:LlamaCppEngine",
    "vllm": "autoglm.engine.backends.vllm:VllmEngine",
}


def register_engine(name: str) -> Callable[[type[Engine]], type[Engine]]:
    """Class decorator: make a backend available under ``name``."""

    def deco(cls: type[Engine]) -> type[Engine]:
        _REGISTRY[name] = cls
        return cls

    return deco


def available_engines() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(name: str) -> type[Engine]:
    if name not in _REGISTRY:
        raise UnsupportedError(
            f"unknown engine {name!r}; available: {', '.join(available_engines())}"
        )
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
        _REGISTRY[name] = target
    return target


def _vllm_usable(device: str) -> bool:
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return False
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def auto_engine_name(model: str, device: str = "cpu") -> str:
    """What ``--engine auto`` means for ``model`` on ``device``: llama.cpp for a GGUF file or a hub repo of
    GGUF files (``org/repo:TAG``); vLLM
    for a Hugging Face checkpoint on CUDA when vLLM is installed; transformers otherwise.

    (On CPU our transformers backend with dynamic int8 measured faster than llama.cpp q8_0 at
    concurrency 16 on the demo model, so auto does not switch a Hugging Face checkpoint to GGUF.)
    """
    if str(model).lower().endswith(".gguf"):
        return "llamacpp"
    from autoglm.hub.gguf_repo import parse_gguf_ref

    if parse_gguf_ref(str(model)) is not None:  # org/repo:Q4_K_M, a hub repo of GGUF files
        return "llamacpp"
    return "vllm" if _vllm_usable(device) else "transformers"


def create_engine(settings: EngineSettings) -> Engine:
    """Build (not start) the engine that ``settings.engine`` names."""
    name = auto_engine_name(settings.model, settings.device) if settings.engine == "auto" else settings.engine
    return _resolve(name)(settings)
