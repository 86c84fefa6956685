"""A LoRA version on a running vLLM engine: the adapter is loaded at run time, the base stays put.

:func:`vllm_adapter_engines` returns, for each running :class:`~autoglm.engine.backends.vllm.VllmEngine`,
a :class:`VllmAdapterView`: an engine that sends every request to the same vLLM ``AsyncLLMEngine``
with a ``LoRARequest`` for the adapter (added once with ``add_lora`` when the view starts, so a
failure to load it is the swap's health-check failure, not a client's). The view's ``root_engine``
is the vLLM engine that owns the weights, so the swap does not shut that one down when the old
backend is retired; shutting the view down shuts it down. This needs vLLM started with LoRA enabled
(``enable_lora``, a ``max_lora_rank`` at least the adapter's ``r``); without it the swap loads the
merged version in full. Needs the ``vllm`` extra and a CUDA GPU: this path is untested without one.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

from autoglm.config import EngineSettings

__all__ = ["vllm_adapter_engines", "VllmAdapterView"]

log = logging.getLogger("autoglm.deploy")


def vllm_adapter_engines(old_engines: list[Any], adapter: Path, settings: EngineSettings) -> tuple[list[Any] | None, str]:
    roots = [getattr(e, "root_engine", None) or e for e in old_engines]
    try:
        from vllm.lora.request import LoRARequest  # noqa: F401 - only to know the extra is there
    except ImportError:
        return None, "vLLM's LoRA support is not installed (the vllm extra)"
    if not all(getattr(r, "_engine", None) is not None for r in roots):
        return None, "the vLLM engine is not running"
    try:
        meta = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"adapter_config.json cannot be read ({exc})"
    base = meta.get("base_model_name_or_path")
    loaded = (roots[0].info or {}).get("path")
    from autoglm.deploy.adapter_swap import same_model

    if not same_model(base, loaded):
        return None, f"its base {base!r} is not the model vLLM loaded ({loaded})"
    return [VllmAdapterView(root, adapter, settings) for root in roots], ""


class VllmAdapterView:
    """A :class:`VllmEngine`'s requests with one LoRA adapter (see the module docstring)."""

    engine_kind = "vllm"

    def __init__(self, root: Any, adapter: Path, settings: EngineSettings):
        self.root_engine = root
        self.adapter = adapter
        self.settings = settings
        self.model_name = settings.served_model_name or root.model_name
        self.tokenizer = root.tokenizer
        self.max_model_len = root.max_model_len
        self.eos_token_ids = list(root.eos_token_ids)
        self.description = root.description
        self.info = {**root.info, "path": str(adapter), "adapter": str(adapter),
                     "base_path": root.info.get("path")}
        self._lora: Any = None

    async def start(self) -> None:
        if self._lora is not None:
            return
        from vllm.lora.request import LoRARequest

        lora_id = (zlib.crc32(str(self.adapter).encode()) & 0x7FFFFFFF) or 1  # stable, positive
        lora = LoRARequest(f"adapter-{lora_id}", lora_id, str(self.adapter))
        engine = self.root_engine._engine
        added = await engine.add_lora(lora) if hasattr(engine, "add_lora") else None
        if added is False:
            raise RuntimeError(f"vLLM refused the adapter {self.adapter} (is the engine started with enable_lora?)")
        self._lora = lora

    def generate(self, request: Any) -> AsyncIterator[Any]:
        root = self.root_engine
        from autoglm.engine.core import validate_request

        validate_request(request, root.max_model_len, len(root.tokenizer))
        return self._stream(request)

    async def _stream(self, request: Any) -> AsyncIterator[Any]:
        # VllmEngine._stream with lora_request= (its converter and sampling translation reused)
        from autoglm.engine.backends.vllm import DeltaConverter, _structured, sampling_kwargs
        from autoglm.engine.io_struct import RequestOutput

        root = self.root_engine
        vllm = root._vllm
        params = vllm.SamplingParams(**sampling_kwargs(request.params), **_structured(vllm, request.params),
                                     output_kind=vllm.sampling_params.RequestOutputKind.DELTA)
        conv = DeltaConverter(request, root._text, root._token_bytes)
        rid = request.request_id
        root._running.add(rid)
        finished = False
        try:
            stream = root._engine.generate({"prompt_token_ids": list(request.prompt_token_ids)}, params, rid,
                                           lora_request=self._lora)
            async for out in stream:
                result = conv.convert(out)
                finished = result.finished
                yield result
                if request.deadline is not None and time.monotonic() > request.deadline and not finished:
                    await root._engine.abort(rid)
                    yield RequestOutput(rid, [], "", finished=True, finish_reason="timeout",
                                        num_prompt_tokens=len(request.prompt_token_ids),
                                        num_output_tokens=conv.num_output_tokens)
                    finished = True
                    return
        finally:
            root._running.discard(rid)
            if not finished:
                await root._engine.abort(rid)

    async def abort(self, request_id: str) -> None:
        await self.root_engine.abort(request_id)

    def stats(self) -> Any:
        return self.root_engine.stats()

    async def shutdown(self) -> None:
        await self.root_engine.shutdown()
